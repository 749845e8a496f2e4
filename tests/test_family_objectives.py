"""prob (arXiv 2510.00526), gift (arXiv 2601.09233) and eaft (arXiv 2601.02151): the pure functions by hand
(value and gradient), and the vocabulary-level ones through the module's chunked path against the same
math on the full logits, gradients included."""

from __future__ import annotations

import math

import pytest
import torch
from test_ops import objective_problem

from psft_lightning.errors import ConfigError
from psft_lightning.objectives import (
    EAFT,
    GIFT,
    Prob,
    build_objective,
    eaft_loss,
    eaft_weight,
    gift_loss,
    gift_token_values,
    prob_loss,
)
from psft_lightning.step import objective_inputs

P = [0.5, 0.25, 0.1, 0.8]


def test_prob_loss_by_hand_and_its_limits():
    logprobs = torch.tensor([math.log(p) for p in P], requires_grad=True)
    mask = torch.tensor([1, 1, 1, 1])
    loss, metrics = prob_loss(logprobs, mask, alpha=0.5)
    assert loss.item() == pytest.approx(sum((1 - p**0.5) / 0.5 for p in P) / 4, abs=1e-7)
    assert metrics["prob/weight_mean"].item() == pytest.approx(sum(p**0.5 for p in P) / 4, abs=1e-7)
    loss.backward()
    # d/d log p of (1 - p^a)/a is -p^a
    assert torch.allclose(logprobs.grad, torch.tensor([-(p**0.5) / 4 for p in P]), atol=1e-7)
    one, _ = prob_loss(logprobs, mask, alpha=1.0)
    assert one.item() == pytest.approx(1 - sum(P) / 4, abs=1e-7)  # alpha 1: the -p objective, plus 1
    tiny, _ = prob_loss(logprobs, mask, alpha=1e-4)
    assert tiny.item() == pytest.approx(-sum(math.log(p) for p in P) / 4, abs=1e-3)  # alpha -> 0: NLL
    with pytest.raises(ConfigError, match="alpha"):
        Prob(alpha=0.0)


def test_gift_on_a_three_token_vocabulary_by_hand():
    # reference uniform; beta = ln 2 on target 0 -> target [1/2, 1/4, 1/4]; policy p = [1/4, 1/2, 1/4]
    logits = torch.tensor([[0.0, math.log(2.0), 0.0]], requires_grad=True)
    ref_logits = torch.zeros(1, 3)
    loss, metrics = gift_loss(logits, ref_logits, torch.tensor([0]), torch.ones(1), beta=math.log(2.0))
    hand = -(0.5 * math.log(0.25) + 0.25 * math.log(0.5) + 0.25 * math.log(0.25))
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    assert metrics["gift/target_mass"].item() == pytest.approx(0.5, abs=1e-7)
    assert metrics["train/nll"].item() == pytest.approx(math.log(4.0), abs=1e-6)
    loss.backward()
    # d CE(t, softmax z) / d z = p - t
    assert torch.allclose(logits.grad, torch.tensor([[-0.25, 0.25, 0.0]]), atol=1e-7)


def test_gift_with_a_huge_beta_is_plain_cross_entropy():
    logits, ref = torch.randn(5, 7), torch.randn(5, 7)
    targets = torch.randint(0, 7, (5,))
    values = gift_token_values(logits, ref, targets, beta=60.0)
    assert torch.allclose(values[:, 0], torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    assert torch.allclose(values[:, 1], torch.ones(5))


def test_eaft_weight_and_loss_by_hand():
    uniform = torch.zeros(1, 20)  # entropy ln 20 over the top 20
    peaked = torch.tensor([[10.0] + [0.0] * 29])  # top 20: one logit 10, nineteen 0
    q = math.exp(10) / (math.exp(10) + 19)
    h_peaked = -(q * math.log(q) + 19 * (1 - q) / 19 * math.log((1 - q) / 19))
    assert eaft_weight(uniform, None, None).item() == pytest.approx(math.log(20) / 3, abs=1e-6)
    assert eaft_weight(peaked, None, None).item() == pytest.approx(h_peaked / 3, abs=1e-6)
    assert eaft_weight(peaked, None, None, alpha=2.0).item() == pytest.approx((h_peaked / 3) ** 2, abs=1e-7)
    logprobs = torch.tensor([math.log(0.5), math.log(0.2)], requires_grad=True)
    weights = torch.tensor([0.9, 0.1], requires_grad=True)
    loss, metrics = eaft_loss(logprobs, weights, torch.ones(2), num_tokens=4)
    assert loss.item() == pytest.approx(-(0.9 * math.log(0.5) + 0.1 * math.log(0.2)) / 4, abs=1e-7)
    assert metrics["eaft/weight_mean"].item() == pytest.approx(0.25, abs=1e-7)
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([-0.9 / 4, -0.1 / 4]), atol=1e-7)
    assert weights.grad is None  # stop-gradient


def naive_vocab_loss(module, batch, objective: str):
    """The objective's math on the full [tokens, vocab] logits of the policy and the reference."""
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    logits = module.policy(**inputs, use_cache=False).logits[:, :-1][mask].float()
    n = float(mask.sum())
    ones = torch.ones(int(n), dtype=torch.bool)
    if objective == "gift":
        with torch.no_grad():
            ref = module.reference(**inputs, use_cache=False).logits[:, :-1][mask].float()
        return gift_loss(logits, ref, targets[mask], ones, beta=module.objective.beta, num_tokens=n)
    logprobs = torch.log_softmax(logits, -1).gather(1, targets[mask][:, None]).squeeze(1)
    return eaft_loss(logprobs, eaft_weight(logits, None, None, module.objective.alpha), ones, num_tokens=n)


@pytest.mark.parametrize("objective", ["gift", "eaft"])
def test_vocab_objective_through_the_module_matches_full_logits(objective):
    module, batch, _ = objective_problem(objective)
    want, want_metrics = naive_vocab_loss(module, batch, objective)
    want.backward()
    want_grads = [p.grad.clone() for p in module.policy.parameters()]
    module.policy.zero_grad()

    needs = module.objective.needs()
    assert needs.reference == (objective == "gift") and (module.reference is not None) == needs.reference
    stats = module.token_stats(
        module.policy, batch, module.reference_model() if needs.reference else None, needs
    )
    assert stats.ref_kl is None and stats.vocab is not None
    assert_step_matches(module, stats, needs, want, want_metrics, want_grads)


def assert_step_matches(module, stats, needs, want, want_metrics: dict, want_grads: list) -> None:
    """The module's objective on its chunked statistics gives the naive loss, metrics and gradients."""
    out = module.objective(objective_inputs(stats, needs, step=0, num_tokens=float(stats.logprobs.numel())))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-5)
    for name, value in want_metrics.items():
        assert out.metrics[name].item() == pytest.approx(value.item(), abs=1e-5), name
    for (name, p), g in zip(module.policy.named_parameters(), want_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=0), name
    assert max(g.abs().max().item() for g in want_grads) > 1e-3


def test_defaults_and_registration():
    assert build_objective("gift").beta == 20.0  # zzy1127/GIFT fsdp_gift_trainer.py default
    assert build_objective("eaft").alpha == 1.0 and build_objective("prob").alpha == 1.0
    assert isinstance(build_objective("eaft"), EAFT) and isinstance(build_objective("gift"), GIFT)
    assert build_objective("gift").needs().vocab_ref and not build_objective("eaft").needs().vocab_ref
    for name, tag in (
        ("gift", "gift/target_mass"),
        ("eaft", "eaft/weight_mean"),
        ("prob", "prob/weight_mean"),
    ):
        charts = build_objective(name).dashboard_charts()
        assert any(tag in tags for tags in charts.values()), name
    with pytest.raises(ValueError, match="inputs.vocab"):
        from psft_lightning.objectives import ObjectiveInputs

        GIFT()(ObjectiveInputs(torch.zeros(2), torch.ones(2)))
