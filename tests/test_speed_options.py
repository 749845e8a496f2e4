"""The speed options: ``model.adamw`` (torch's AdamW kernels), ``model.compile`` (compiled decoder layers)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

from psft_lightning.compiled import compile_layers
from psft_lightning.errors import ConfigError
from psft_lightning.models import tiny_model
from psft_lightning.module import PSFTModule
from psft_lightning.schedule import adamw


def adam_steps(implementation: str, steps: int = 5) -> list[torch.Tensor]:
    """``steps`` AdamW updates (weight decay on) of the tiny model with the same seeded gradients."""
    model = tiny_model()
    optimizer = adamw(model, 1e-2, 0.1, (0.9, 0.999), 1e-8, implementation)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach() for p in model.parameters()]


def test_adamw_kernels_agree_foreach_exactly_fused_to_the_last_bits():
    loop, foreach, fused = (adam_steps(impl) for impl in ("for-loop", "foreach", "fused"))
    assert all(torch.equal(a, b) for a, b in zip(loop, foreach, strict=True))
    moved = sum(int((a != b).sum()) for a, b in zip(loop, fused, strict=True))
    worst = max(float((a - b).abs().max()) for a, b in zip(loop, fused, strict=True))
    # fused multiply-adds round differently: within a few fp32 ulps of weights of order 1, over 5 steps
    assert moved > 0 and worst < 1e-6


def test_module_passes_its_adamw_choice_and_refuses_an_unknown_one():
    module = PSFTModule(model="tiny", objective="ce", adamw="foreach")
    module.configure_model()
    assert module.hparams.adamw == "foreach"
    optimizer = adamw(module.policy, 1e-3, 0.0, (0.9, 0.999), 1e-8, module.hparams.adamw)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
    assert PSFTModule(model="tiny", objective="ce").hparams.adamw == "fused"
    with pytest.raises(ConfigError, match="model.adamw must be fused, foreach or for-loop"):
        PSFTModule(model="tiny", objective="ce", adamw="sgd")


def logits(model, length: int) -> torch.Tensor:
    ids = torch.randint(1, 200, (2, length), generator=torch.Generator().manual_seed(length))
    return model(input_ids=ids, use_cache=False).logits


def test_compiled_layers_match_eager_share_one_graph_and_a_copy_keeps_its_own_weights():
    torch._dynamo.reset()
    model = tiny_model({"num_hidden_layers": 3})
    eager = {n: logits(model, n) for n in (9, 17, 33)}
    assert compile_layers(model, backend="eager") == 3
    torch._dynamo.utils.counters.clear()
    for n, expected in eager.items():
        torch.testing.assert_close(logits(model, n), expected, rtol=1e-5, atol=1e-5)
    # one graph for the three layers and the three lengths: the layers share it, shapes are dynamic
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    snapshot = copy.deepcopy(model)  # what the old-policy snapshot does
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    torch.testing.assert_close(logits(snapshot, 9), eager[9], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(model, 9), eager[9])


def test_module_compile_option_compiles_policy_and_reference():
    module = PSFTModule(model="tiny", objective="kl", compile=True)
    module.configure_model()
    for model in (module.policy, module.reference):
        layer = model.base_model.layers[0]
        assert layer.forward.__self__ is layer and layer.forward.__func__ is not type(layer).forward
    plain = PSFTModule(model="tiny", objective="ce")
    plain.configure_model()
    assert "forward" not in vars(plain.policy.base_model.layers[0])
