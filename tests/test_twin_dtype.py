"""Frozen twins (pi_old's snapshot, the KL reference) keep their Linears in autocast's dtype under
bf16-mixed, cast once, instead of autocast re-casting their fp32 weights on every forward.

The tolerance is zero: autocast would cast those very weights to bf16 with the same rounding (to
nearest even) before each matmul, so the stored bf16 copy must give the same bits, not close ones.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tiny_run import arithmetic_data
from torch import nn

from psft_lightning.callbacks import OldPolicy
from psft_lightning.data.collate import collate
from psft_lightning.data.formats import IGNORE_INDEX, Example
from psft_lightning.models import tiny_model
from psft_lightning.module import PSFTModule
from psft_lightning.objectives import build_objective
from psft_lightning.policies import frozen
from psft_lightning.step import token_logprobs, train_micro_batch

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (24, 17, 31):
        ids = torch.randint(1, 200, (n,), generator=g).tolist()
        examples.append(Example(ids, [IGNORE_INDEX] * 5 + ids[5:]))
    return collate(examples, 0)


@pytest.mark.parametrize("tied", [True, False])
def test_a_bf16_twin_gives_the_autocast_bits_of_its_fp32_twin(tied):
    policy = tiny_model({"tie_word_embeddings": tied})
    fp32, bf16 = frozen(policy), frozen(policy, torch.bfloat16)
    linears = [m for m in bf16.modules() if isinstance(m, nn.Linear)]
    head_is_embedding = bf16.get_output_embeddings().weight is bf16.get_input_embeddings().weight
    assert head_is_embedding == tied
    # every Linear is bf16 but a head tied to the (fp32) input embedding; embeddings and norms stay fp32
    assert {m.weight.dtype for m in linears if m.weight is not bf16.get_input_embeddings().weight} == {
        torch.bfloat16
    }
    assert bf16.get_input_embeddings().weight.dtype == torch.float32
    assert {p.dtype for n, p in bf16.named_parameters() if "norm" in n} == {torch.float32}
    with BF16:
        old, new = token_logprobs(fp32, batch(), 16), token_logprobs(bf16, batch(), 16)
    assert old.dtype == new.dtype == torch.float32 and old.numel() == 19 + 12 + 26
    assert torch.equal(old, new)


def test_a_kl_step_is_the_same_with_a_bf16_reference():
    policy = tiny_model()
    reference = frozen(policy)
    with torch.no_grad():  # a reference that differs, so the KL is not zero
        for p in reference.parameters():
            p.mul_(1.01)
    bf16_reference = frozen(reference, torch.bfloat16)
    kl = build_objective("kl")
    losses, grads = [], []
    for ref in (reference, bf16_reference):
        with BF16:
            result = train_micro_batch(kl, policy, ref, None, batch(), 0, 1, 0, 16)
        result.output.loss.backward()
        losses.append(result.output.loss.detach())
        grads.append(policy.lm_head.weight.grad.clone())
        policy.zero_grad(set_to_none=True)
    assert losses[0] > 0 and torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


def test_bf16_mixed_keeps_pi_old_in_bf16_and_its_ratio_exactly_one(arithmetic_files, tmp_path):
    """Under bf16-mixed the module's twins are bf16 from the trainer's precision; at a refresh pi_old's
    log-probs are the policy's own, detached (ratio exactly 1), and right after it, before an update,
    the bf16 snapshot's forward gives the policy's autocast bits (ratio exactly 1 again)."""
    train, val = arithmetic_files
    module = PSFTModule(model="tiny", objective="psft")
    callback = OldPolicy(refresh_every_n_steps=2)
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=arithmetic_data(train, val, batch_size=2))
    assert module.twin_dtype == torch.bfloat16
    snapshot = callback.old.model
    assert snapshot.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    callback.old.refresh(4, lambda: ())
    assert torch.equal(
        snapshot.model.layers[0].mlp.down_proj.weight,
        module.policy.model.layers[0].mlp.down_proj.weight.bfloat16(),
    )
    for step in (4, 5):  # the refresh step, then a step it serves
        with BF16:
            result = train_micro_batch(
                module.objective, module.policy, None, callback.old, batch(), step, 1, 0
            )
        ratio = result.output.tokens["psft/ratio"]
        assert ratio.numel() == 57 and torch.equal(ratio, torch.ones_like(ratio)), step


def test_fp32_runs_keep_fp32_twins():
    module = PSFTModule(model="tiny", objective="kl")
    module.configure_model()  # no trainer: no autocast to match
    assert module.twin_dtype is None
    assert {p.dtype for p in module.reference.parameters()} == {torch.float32}
    old = module.make_old_policy("snapshot")
    assert {p.dtype for p in old.model.parameters()} == {torch.float32}


def test_the_twin_dtype_follows_the_precision_but_not_under_fsdp1():
    """Lightning's FSDPStrategy flattens a wrapped module's parameters into one dtype: no bf16 Linears."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    module = PSFTModule(model="tiny", objective="kl")
    cases = [(DDPStrategy(), "bf16-mixed", torch.bfloat16), (DDPStrategy(), "32-true", None)]
    cases += [(DDPStrategy(), "16-mixed", torch.float16), (FSDPStrategy(), "bf16-mixed", None)]
    for strategy, precision, dtype in cases:
        module._trainer = SimpleNamespace(strategy=strategy, precision=precision, callbacks=[])
        assert module._autocast_dtype() == dtype, (strategy, precision)
