"""Objectives (CE, KL, PSFT, PSFT warm-up) and the registry, checked against hand computations."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

from psft_lightning.errors import ConfigError
from psft_lightning.objectives import (
    CE,
    ENTRY_POINT_GROUP,
    KL,
    PSFT,
    Needs,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    PSFTWarmup,
    available_objectives,
    build_objective,
    nll_loss,
    objective_class,
    psft_loss,
    register_objective,
)
from psft_lightning.objectives import base as objectives_base
from psft_lightning.ops import chunked_token_stats

BUILTIN = ("ce", "kl", "psft", "psft_warmup")

# --------------------------------------------------------------------------------------------------
# The hand example shared by the PSFT tests: batch 2, seq 3, the second row has 1 valid token (N = 4).
#   valid log-ratios: 0 (r=1), log 1.5 (r=1.5 > 1.28, clipped), log 0.5 (r=0.5 < 0.8), log 1.1 (r=1.1)
#   masked positions carry wild ratios that must not leak into the loss, the metrics or the gradient.
# --------------------------------------------------------------------------------------------------
MASK = [[1, 1, 1], [1, 0, 0]]
RATIOS = [1.0, 1.5, 0.5, 1.1]  # the valid tokens, in row-major order
OLD = [[-1.0, -2.0, -0.5], [-1.5, -3.0, -0.25]]
LOG_RATIO = [[0.0, math.log(1.5), math.log(0.5)], [math.log(1.1), 5.0, -7.0]]
N = 4
# min(r, clip(r, 0.8, 1.28)) per valid token: 1, 1.28, 0.5, 1.1
HAND_LOSS = -(1.0 + 1.28 + 0.5 + 1.1) / N  # -0.97
HAND_GRAD = [[-1.0 / N, 0.0, -0.5 / N], [-1.1 / N, 0.0, 0.0]]


def hand_example(dtype=torch.float64):
    old = torch.tensor(OLD, dtype=dtype)
    logprobs = (old + torch.tensor(LOG_RATIO, dtype=dtype)).requires_grad_(True)
    return logprobs, old, torch.tensor(MASK, dtype=torch.bool)


def assert_close(actual, expected, tol=1e-6):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"{actual.tolist()} != {expected.tolist()}"


# ============================================================================================ psft_loss
def test_psft_loss_hand_example_value_and_metrics():
    logprobs, old, mask = hand_example()
    loss, metrics = psft_loss(logprobs, old, mask)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(HAND_LOSS, abs=1e-6)
    assert loss.item() == pytest.approx(-0.97, abs=1e-6)
    assert metrics["psft/clip_frac_high"].item() == pytest.approx(1 / 4, abs=1e-7)
    assert metrics["psft/clip_frac_low"].item() == pytest.approx(1 / 4, abs=1e-7)
    assert metrics["psft/ratio_mean"].item() == pytest.approx((1.0 + 1.5 + 0.5 + 1.1) / 4, abs=1e-6)
    assert metrics["psft/ratio_max"].item() == pytest.approx(1.5, abs=1e-6)  # not exp(5) from the pad
    approx_kl = -(0.0 + math.log(1.5) + math.log(0.5) + math.log(1.1)) / 4
    assert metrics["psft/approx_kl"].item() == pytest.approx(approx_kl, abs=1e-6)
    assert all(not v.requires_grad for v in metrics.values())


def test_psft_loss_gradient_zero_above_upper_clip_and_minus_r_over_n_elsewhere():
    logprobs, old, mask = hand_example()
    loss, _ = psft_loss(logprobs, old, mask)
    loss.backward()
    grad = logprobs.grad
    assert grad[0, 1].item() == 0.0  # r = 1.5 > 1.28: exactly no gradient
    assert grad[0, 2].item() == pytest.approx(-0.5 / N, abs=1e-7)  # r = 0.5 < 0.8: still learns
    assert grad[0, 0].item() == pytest.approx(-1.0 / N, abs=1e-7)
    assert grad[1, 0].item() == pytest.approx(-1.1 / N, abs=1e-7)
    assert grad[1, 1].item() == 0.0 and grad[1, 2].item() == 0.0  # masked
    assert_close(grad, HAND_GRAD, tol=1e-7)
    assert old.grad is None


def test_psft_loss_custom_clip_range():
    # clip_low = clip_high = 0.1: r = 1.15 is clipped to 1.1, r = 0.85 stays 0.85 (upper clip only).
    old = torch.zeros(3)
    logprobs = torch.tensor([math.log(1.15), math.log(0.85), math.log(1.05)], requires_grad=True)
    loss, metrics = psft_loss(logprobs, old, torch.ones(3), clip_low=0.1, clip_high=0.1)
    assert loss.item() == pytest.approx(-(1.1 + 0.85 + 1.05) / 3, abs=1e-6)
    assert metrics["psft/clip_frac_high"].item() == pytest.approx(1 / 3, abs=1e-7)
    assert metrics["psft/clip_frac_low"].item() == pytest.approx(1 / 3, abs=1e-7)
    loss.backward()
    assert_close(logprobs.grad, [0.0, -0.85 / 3, -1.05 / 3], tol=1e-6)


def test_psft_loss_is_token_mean_not_mean_of_sequence_means():
    # Row 0 has 3 tokens at r = 0.5, row 1 has 1 token at r = 1.
    old = torch.zeros(2, 3)
    logprobs = torch.tensor([[math.log(0.5)] * 3, [0.0, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, _ = psft_loss(logprobs, old, mask)
    token_mean = -(3 * 0.5 + 1.0) / 4  # -0.625
    mean_of_means = -(0.5 + 1.0) / 2  # -0.75
    assert loss.item() == pytest.approx(token_mean, abs=1e-6)
    assert abs(loss.item() - mean_of_means) > 0.1
    loss.backward()
    # every token weighs 1/N, so the 3-token row has 3x the weight of the 1-token row
    assert_close(logprobs.grad, [[-0.5 / 4] * 3, [-1.0 / 4, 0.0, 0.0]], tol=1e-7)


def test_psft_loss_num_tokens_override_scales_loss_and_grad():
    for num_tokens in (8, 8.0, torch.tensor(8)):
        logprobs, old, mask = hand_example()
        loss, metrics = psft_loss(logprobs, old, mask, num_tokens=num_tokens)
        assert loss.item() == pytest.approx(-3.88 / 8, abs=1e-6)
        assert metrics["psft/clip_frac_high"].item() == pytest.approx(1 / 8, abs=1e-7)
        assert metrics["psft/ratio_max"].item() == pytest.approx(1.5, abs=1e-6)  # a max, not scaled
        loss.backward()
        assert_close(logprobs.grad, [[g * N / 8 for g in row] for row in HAND_GRAD], tol=1e-7)


def test_psft_loss_at_ratio_one_equals_minus_one_and_ce_gradient():
    values = [[-0.3, -2.0, -1.1], [-0.7, -4.0, -0.1]]
    mask = torch.tensor(MASK)
    logprobs = torch.tensor(values, requires_grad=True)
    loss, metrics = psft_loss(logprobs, logprobs.detach().clone(), mask)
    assert loss.item() == -1.0
    assert metrics["psft/ratio_mean"].item() == pytest.approx(1.0, abs=1e-7)
    assert metrics["psft/approx_kl"].item() == 0.0
    assert metrics["psft/clip_frac_high"].item() == 0.0 and metrics["psft/clip_frac_low"].item() == 0.0
    loss.backward()
    ce_logprobs = torch.tensor(values, requires_grad=True)
    ce, _ = nll_loss(ce_logprobs, mask)
    ce.backward()
    expected = [[-0.25, -0.25, -0.25], [-0.25, 0.0, 0.0]]
    assert_close(logprobs.grad, expected, tol=1e-7)
    assert_close(ce_logprobs.grad, expected, tol=1e-7)


def test_psft_loss_log_ratio_clamp_keeps_everything_finite():
    # log-ratios of +1e4 and -1e4 would overflow exp() without the +-20 clamp.
    old = torch.tensor([-1e4, 0.0, -1.0])
    logprobs = torch.tensor([0.0, -1e4, -1.0], requires_grad=True)
    loss, metrics = psft_loss(logprobs, old, torch.ones(3))
    assert math.isfinite(loss.item())
    # surrogates: min(e^20, 1.28) = 1.28, e^-20, 1
    assert loss.item() == pytest.approx(-(1.28 + math.exp(-20) + 1.0) / 3, abs=1e-6)
    assert metrics["psft/ratio_max"].item() == pytest.approx(math.exp(20), rel=1e-5)
    assert metrics["psft/approx_kl"].item() == pytest.approx((-20 + 20 + 0) / 3, abs=1e-5)
    assert all(math.isfinite(v.item()) for v in metrics.values())
    loss.backward()
    assert torch.isfinite(logprobs.grad).all()
    assert logprobs.grad[0].item() == 0.0  # clipped (and beyond the clamp)
    assert abs(logprobs.grad[1].item()) < 1e-8  # beyond the clamp: no gradient (r ~ 2e-9 anyway)
    assert logprobs.grad[2].item() == pytest.approx(-1 / 3, abs=1e-7)


def test_psft_loss_bf16_inputs_give_fp32_loss():
    old = torch.tensor([-1.0, -2.0], dtype=torch.bfloat16)
    logprobs = torch.tensor([-1.0, -2.0], dtype=torch.bfloat16, requires_grad=True)
    loss, metrics = psft_loss(logprobs, old, torch.ones(2))
    assert loss.dtype == torch.float32 and loss.item() == -1.0
    assert metrics["psft/ratio_mean"].dtype == torch.float32


def test_psft_loss_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        psft_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="one shape"):
        psft_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(6))


def test_zero_loss_tokens_raise_clear_error_instead_of_nan():
    zeros = torch.zeros(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no loss tokens"):
        psft_loss(zeros, zeros, mask)
    with pytest.raises(ValueError, match="no loss tokens"):
        nll_loss(zeros, mask)
    with pytest.raises(ValueError, match="no loss tokens"):
        psft_loss(zeros, zeros, torch.ones(2, 3), num_tokens=0)
    for objective in (CE(), PSFT(), KL(), PSFTWarmup(warmup_steps=1)):
        with pytest.raises(ValueError, match="no loss tokens"):
            objective(ObjectiveInputs(zeros, mask, old_logprobs=zeros, ref_kl=zeros))


# ============================================================================================= PSFT class
def test_psft_objective_matches_hand_values_and_adds_nll_metric():
    logprobs, old, mask = hand_example(torch.float32)
    out = PSFT()(ObjectiveInputs(logprobs, mask, step=7, old_logprobs=old))
    assert out.loss.item() == pytest.approx(HAND_LOSS, abs=1e-6)
    valid_logprobs = [OLD[0][0] + LOG_RATIO[0][0], OLD[0][1] + LOG_RATIO[0][1]]
    valid_logprobs += [OLD[0][2] + LOG_RATIO[0][2], OLD[1][0] + LOG_RATIO[1][0]]
    assert out.metrics["train/nll"].item() == pytest.approx(-sum(valid_logprobs) / 4, abs=1e-6)
    assert out.metrics["psft/clip_frac_high"].item() == pytest.approx(0.25, abs=1e-7)
    out.loss.backward()
    assert_close(logprobs.grad, HAND_GRAD, tol=1e-6)


def test_psft_objective_contract_and_errors():
    obj = PSFT()
    assert (obj.clip_low, obj.clip_high) == (0.2, 0.28)
    assert obj.needs() == Needs(old_policy_from=0)
    assert obj.needs().old_logprobs_at(0) and obj.needs().old_policy and not obj.needs().reference
    with pytest.raises(ValueError, match="old-policy log-probs"):
        obj(ObjectiveInputs(torch.zeros(3), torch.ones(3)))
    with pytest.raises(ConfigError, match="clip_low"):
        PSFT(clip_low=1.0)
    with pytest.raises(ConfigError, match="clip_low"):
        PSFT(clip_low=-0.1)
    with pytest.raises(ConfigError, match="clip_high"):
        PSFT(clip_high=-0.01)


# ================================================================================================ CE / NLL
def test_nll_loss_matches_hand_computation():
    probs = [[0.5, 0.25, 0.1], [0.8, 0.01, 0.02]]
    logprobs = torch.tensor([[math.log(p) for p in row] for row in probs], requires_grad=True)
    mask = torch.tensor(MASK)
    loss, metrics = nll_loss(logprobs, mask)
    hand = -(math.log(0.5) + math.log(0.25) + math.log(0.1) + math.log(0.8)) / 4
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    assert loss.item() == pytest.approx(1.151293, abs=1e-5)  # = ln(100) / 4
    assert metrics["train/nll"].item() == pytest.approx(hand, abs=1e-6)
    loss.backward()
    assert_close(logprobs.grad, [[-0.25, -0.25, -0.25], [-0.25, 0.0, 0.0]], tol=1e-7)


def test_ce_objective_matches_hand_computation_and_num_tokens():
    logprobs = torch.tensor([-1.0, -2.0, -3.0, -100.0], requires_grad=True)
    mask = torch.tensor([1, 1, 1, 0])
    out = CE()(ObjectiveInputs(logprobs, mask))
    assert isinstance(out, ObjectiveOutput)
    assert out.loss.item() == pytest.approx(2.0, abs=1e-6)
    assert out.metrics["train/nll"].item() == pytest.approx(2.0, abs=1e-6)
    out = CE()(ObjectiveInputs(logprobs, mask, num_tokens=12))
    assert out.loss.item() == pytest.approx(6.0 / 12, abs=1e-6)
    out.loss.backward()
    assert_close(logprobs.grad, [-1 / 12, -1 / 12, -1 / 12, 0.0], tol=1e-7)
    assert CE().needs() == Needs() and not CE().needs().old_logprobs_at(0) and not CE().needs().old_policy


def test_ce_is_token_mean_not_mean_of_sequence_means():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-3.0, 0.0, 0.0]])
    loss, _ = nll_loss(logprobs, torch.tensor(MASK))
    assert loss.item() == pytest.approx(6.0 / 4, abs=1e-7)  # mean of sequence means would be 2.0


# ====================================================================================================== KL
def test_kl_objective_is_nll_plus_beta_kl_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -9.0, -9.0]], requires_grad=True)
    ref_kl = torch.tensor([[0.1, 0.0, 0.3], [0.2, 50.0, 50.0]], requires_grad=True)
    mask = torch.tensor(MASK)
    out = KL(beta=0.5)(ObjectiveInputs(logprobs, mask, ref_kl=ref_kl))
    nll = (1.0 + 2.0 + 0.5 + 3.0) / 4
    kl = (0.1 + 0.0 + 0.3 + 0.2) / 4
    assert out.loss.item() == pytest.approx(nll + 0.5 * kl, abs=1e-6)
    assert out.metrics["train/nll"].item() == pytest.approx(nll, abs=1e-6)
    assert out.metrics["kl/ref_kl"].item() == pytest.approx(kl, abs=1e-6)
    out.loss.backward()
    assert_close(logprobs.grad, [[-0.25] * 3, [-0.25, 0.0, 0.0]], tol=1e-7)
    assert_close(ref_kl.grad, [[0.125] * 3, [0.125, 0.0, 0.0]], tol=1e-7)
    # default beta 0.1, and num_tokens override
    out = KL()(ObjectiveInputs(logprobs, mask, ref_kl=ref_kl, num_tokens=10))
    assert out.loss.item() == pytest.approx((6.5 + 0.1 * 0.6) / 10, abs=1e-6)


def test_kl_objective_contract_and_errors():
    assert KL().needs() == Needs(ref_kl="reverse") and KL().needs().reference and KL().beta == 0.1
    assert not KL().needs().old_logprobs_at(5) and not KL().needs().old_policy
    with pytest.raises(ValueError, match="ref_kl"):
        KL()(ObjectiveInputs(torch.zeros(3), torch.ones(3)))
    with pytest.raises(ConfigError, match="beta"):
        KL(beta=-0.1)


def test_ops_kl_on_two_token_vocab_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]; reference logits [0, 0] -> q = [1/2, 1/2]
    hidden = torch.tensor([[1.0]], requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3.0)]], requires_grad=True)
    stats = chunked_token_stats(hidden, weight, torch.tensor([1]), torch.ones(1, 1), torch.zeros(2, 1))
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert stats.ref_kl.item() == pytest.approx(kl, abs=1e-7)
    assert stats.logprobs.item() == pytest.approx(math.log(0.75), abs=1e-7)
    # d KL / d z_j = p_j (log p_j - log q_j - KL); z = h * W so dz/dW_j = h = 1, dz/dh = W_j
    dz = [0.25 * (math.log(0.5) - kl), 0.75 * (math.log(1.5) - kl)]
    stats.ref_kl.sum().backward()
    assert weight.grad.flatten().tolist() == pytest.approx(dz, abs=1e-7)
    assert hidden.grad.item() == pytest.approx(dz[1] * math.log(3.0), abs=1e-7)


def _naive_kl_objective(hidden, weight, targets, ref_hidden, ref_weight, beta):
    """Full-logits NLL + beta * KL written from scratch (no psft_lightning code)."""
    logp = torch.log_softmax(hidden @ weight.t(), dim=-1)
    logq = torch.log_softmax(ref_hidden @ ref_weight.t(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    return nll.mean() + beta * kl.mean(), kl


def _kl_problem(n=12, h=8, v=40, same_reference=False):
    hidden = torch.randn(n, h) * 0.5
    weight = torch.randn(v, h) * 0.5
    if same_reference:
        ref_hidden, ref_weight = hidden.clone(), weight.clone()
    else:
        ref_hidden = hidden + torch.randn(n, h) * 0.3
        ref_weight = weight + torch.randn(v, h) * 0.3
    targets = torch.randint(0, v, (n,))
    return hidden, weight, targets, ref_hidden, ref_weight


def test_kl_is_zero_with_zero_gradient_when_policy_equals_reference():
    hidden, weight, targets, ref_hidden, ref_weight = _kl_problem(same_reference=True)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    stats = chunked_token_stats(hidden, weight, targets, ref_hidden, ref_weight, chunk_size=5)
    assert stats.ref_kl.abs().max().item() < 1e-7
    out = KL(beta=1.0)(ObjectiveInputs(stats.logprobs, torch.ones(12), ref_kl=stats.ref_kl))
    assert out.metrics["kl/ref_kl"].abs().item() < 1e-7
    (0.1 * stats.ref_kl.sum()).backward()
    assert hidden.grad.abs().max().item() < 1e-7
    assert weight.grad.abs().max().item() < 1e-7


@pytest.mark.parametrize("chunk_size", [1, 5, 100])
def test_kl_objective_through_ops_matches_naive_full_logits(chunk_size):
    beta = 0.3
    hidden, weight, targets, ref_hidden, ref_weight = _kl_problem()
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    stats = chunked_token_stats(h1, w1, targets, ref_hidden, ref_weight, chunk_size=chunk_size)
    out = KL(beta=beta)(ObjectiveInputs(stats.logprobs, torch.ones(12), ref_kl=stats.ref_kl))
    out.loss.backward()

    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    naive_loss, naive_kl = _naive_kl_objective(h2, w2, targets, ref_hidden, ref_weight, beta)
    naive_loss.backward()

    assert naive_kl.min().item() > 1e-3  # the reference really differs
    assert torch.allclose(stats.ref_kl, naive_kl.detach(), atol=1e-5, rtol=0)
    assert out.loss.item() == pytest.approx(naive_loss.item(), abs=1e-5)
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5, rtol=0)
    assert torch.allclose(w1.grad, w2.grad, atol=1e-5, rtol=0)
    # the loss is NLL + beta * KL, re-added from the per-token values
    nll = -stats.logprobs.detach().mean().item()
    kl = stats.ref_kl.detach().mean().item()
    assert out.loss.item() == pytest.approx(nll + beta * kl, abs=1e-6)


def test_kl_part_gradient_alone_matches_naive():
    beta = 0.2
    hidden, weight, targets, ref_hidden, ref_weight = _kl_problem()
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    stats = chunked_token_stats(h1, w1, targets, ref_hidden, ref_weight, chunk_size=4)
    (beta * stats.ref_kl.mean()).backward()
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    _, naive_kl = _naive_kl_objective(h2, w2, targets, ref_hidden, ref_weight, beta)
    (beta * naive_kl.mean()).backward()
    assert h2.grad.abs().max().item() > 1e-3
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5, rtol=0)
    assert torch.allclose(w1.grad, w2.grad, atol=1e-5, rtol=0)


# ============================================================================================ psft_warmup
def test_psft_warmup_is_ce_before_the_switch_and_ignores_old_logprobs():
    obj = PSFTWarmup(warmup_steps=3)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor(MASK)
    ce_hand = (1.0 + 2.0 + 0.5 + 3.0) / 4  # 1.625
    for old in (None, torch.full((2, 3), 123.0), torch.zeros(2, 2)):  # even a wrong shape is never read
        out = obj(ObjectiveInputs(logprobs, mask, step=2, old_logprobs=old))
        assert out.loss.item() == pytest.approx(ce_hand, abs=1e-6)
        assert set(out.metrics) == {"train/nll"}
    out = obj(ObjectiveInputs(logprobs, mask, step=0, num_tokens=13))
    assert out.loss.item() == pytest.approx(6.5 / 13, abs=1e-6)


def test_psft_warmup_is_psft_from_the_switch():
    obj = PSFTWarmup(warmup_steps=3)
    for step in (3, 4, 100):
        logprobs, old, mask = hand_example(torch.float32)
        out = obj(ObjectiveInputs(logprobs, mask, step=step, old_logprobs=old))
        assert out.loss.item() == pytest.approx(HAND_LOSS, abs=1e-6)
        assert out.metrics["psft/clip_frac_high"].item() == pytest.approx(0.25, abs=1e-7)
        out.loss.backward()
        assert_close(logprobs.grad, HAND_GRAD, tol=1e-6)
    with pytest.raises(ValueError, match="old-policy log-probs"):
        obj(ObjectiveInputs(torch.zeros(3), torch.ones(3), step=3))


def test_psft_warmup_schedule_contract():
    obj = PSFTWarmup(warmup_steps=3, clip_low=0.1, clip_high=0.2)
    assert [obj.needs().old_logprobs_at(s) for s in range(6)] == [False, False, False, True, True, True]
    assert obj.needs().old_policy_from == 3
    assert obj.needs().old_policy is True
    assert (obj.warmup_steps, obj.clip_low, obj.clip_high) == (3, 0.1, 0.2)
    assert PSFTWarmup().warmup_steps == 10
    zero = PSFTWarmup(warmup_steps=0)
    assert zero.needs().old_logprobs_at(0) is True and zero.needs().old_policy_from == 0
    with pytest.raises(ConfigError, match="warmup_steps"):
        PSFTWarmup(warmup_steps=-1)
    with pytest.raises(ConfigError, match="clip_low"):
        PSFTWarmup(clip_low=1.5)


# ================================================================================================ registry
def test_build_objective_returns_builtin_classes():
    expected = {"ce": CE, "kl": KL, "psft": PSFT, "psft_warmup": PSFTWarmup}
    for name, cls in expected.items():
        obj = build_objective(name)
        assert type(obj) is cls
        assert cls.name == name
        assert objective_class(name) is cls
    assert set(BUILTIN) <= set(available_objectives())
    instance = PSFT(clip_high=0.5)
    assert build_objective(instance) is instance
    with pytest.raises(ConfigError, match="name or an Objective instance"):
        build_objective(3)


def test_unknown_objective_suggests_the_closest_and_lists_known_names():
    with pytest.raises(ConfigError, match="Did you mean 'psft'") as info:
        build_objective("psftt")
    message = str(info.value)
    assert "Unknown objective 'psftt'" in message
    assert "Known objectives: " in message
    for name in BUILTIN:
        assert f"{name}," in message or f"{name}." in message
    assert ENTRY_POINT_GROUP in message
    with pytest.raises(ConfigError) as info:
        build_objective("zzzzzzzz")
    assert "Did you mean" not in str(info.value)


def test_objective_class_imports_dotted_paths():
    assert objective_class("psft_lightning.objectives.ce.CE") is CE
    assert type(build_objective("psft_lightning.objectives.psft_warmup.PSFTWarmup")) is PSFTWarmup
    with pytest.raises(ConfigError, match="not a subclass"):
        objective_class("psft_lightning.objectives.base.nll_loss")
    with pytest.raises(ConfigError, match="Cannot import"):
        objective_class("no_such_module_xyz.Thing")
    with pytest.raises(ConfigError, match="Cannot import"):
        objective_class("psft_lightning.objectives.ce.NoSuchClass")


def test_register_objective_makes_a_custom_class_buildable(clean_registry):
    @register_objective("test_double_nll")
    class DoubleNLL(Objective):
        def __call__(self, inputs):
            loss, metrics = nll_loss(inputs.logprobs, inputs.mask, inputs.num_tokens)
            return ObjectiveOutput(2 * loss, metrics)

    assert DoubleNLL.name == "test_double_nll"
    obj = build_objective("test_double_nll")
    assert type(obj) is DoubleNLL
    out = obj(ObjectiveInputs(torch.tensor([-1.0, -2.0]), torch.ones(2)))
    assert out.loss.item() == pytest.approx(3.0, abs=1e-7)
    assert "test_double_nll" in available_objectives()
    # registering the same class again is a no-op; another class under a taken name is an error
    assert register_objective("test_double_nll")(DoubleNLL) is DoubleNLL

    class Other(Objective):
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_objective("test_double_nll")(Other)
    with pytest.raises(ConfigError, match="already registered"):
        register_objective("psft")(Other)
    assert objective_class("psft") is PSFT
    with pytest.raises(TypeError, match="Objective subclass"):
        register_objective("not_a_class")(lambda inputs: None)
    assert "not_a_class" not in objectives_base._REGISTRY


def _fake_distribution(root, dist, module, entry):
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry}\n")
    if module is not None:
        (root / f"{module}.py").write_text(
            textwrap.dedent(
                """
                from psft_lightning.objectives import Objective, ObjectiveOutput


                class MyObjective(Objective):
                    def __init__(self, scale: float = 10.0) -> None:
                        self.scale = scale

                    def __call__(self, inputs):
                        return ObjectiveOutput(-self.scale * (inputs.logprobs * inputs.mask).sum())
                """
            )
        )


def test_entry_point_plugin_is_buildable_by_name(tmp_path, monkeypatch, clean_registry):
    _fake_distribution(tmp_path, "myplug", "myplug_mod", "my_obj = myplug_mod:MyObjective")
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib caches
    obj = build_objective("my_obj")
    assert type(obj).__name__ == "MyObjective" and type(obj).__module__ == "myplug_mod"
    assert type(obj).name == "my_obj"
    assert "my_obj" in available_objectives()
    out = obj(ObjectiveInputs(torch.tensor([-1.0, -2.0, -4.0]), torch.tensor([1, 1, 0])))
    assert out.loss.item() == pytest.approx(30.0, abs=1e-6)


def test_plugin_registry_entry_was_cleaned_up():
    # runs after the plugin test (file order): its name must be gone again
    assert "my_obj" not in objectives_base._REGISTRY
    with pytest.raises(ConfigError, match="Unknown objective 'my_obj'"):
        build_objective("my_obj")


def test_broken_entry_point_plugin_reports_its_name(tmp_path, monkeypatch, clean_registry):
    _fake_distribution(tmp_path, "brokenplug", None, "broken_obj = brokenplug_missing_mod:Nope")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="'broken_obj'.*failed to import"):
        build_objective("broken_obj")
    assert objective_class("psft") is PSFT  # registered names still resolve without the plugin scan
