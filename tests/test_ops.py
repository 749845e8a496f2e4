"""ops.chunked_token_stats against naive full-logits math: values, gradients, autocast, errors."""

from __future__ import annotations

import math

import pytest
import torch

from psft_lightning.ops import (
    TokenStats,
    chunked_logprobs,
    chunked_token_stats,
    lm_head,
    naive_logprobs,
    naive_token_stats,
)

N, H, V = 10, 16, 50
TOL = 1e-5


def make_problem(with_ref=True):
    hidden = torch.randn(N, H) * 0.1
    weight = torch.randn(V, H)
    targets = torch.randint(0, V, (N,))
    targets[0] = (hidden[0] @ weight.t()).argmax()  # at least one correct prediction
    ref_hidden = hidden + torch.randn(N, H) * 0.1 if with_ref else None
    ref_weight = weight + torch.randn(V, H) * 0.1 if with_ref else None
    # fixed per-token weights so the backward pass sees a different upstream grad for every token
    a = torch.randn(N)
    b = torch.rand(N) + 0.5
    return hidden, weight, targets, ref_hidden, ref_weight, a, b


def hand_stats(hidden, weight, targets, ref_hidden=None, ref_weight=None):
    """Independent full-logits reference written with plain torch ops."""
    logits = hidden @ weight.t()
    logp = torch.log_softmax(logits, dim=-1)
    out = {
        "logprobs": logp[torch.arange(len(targets)), targets],
        "entropy": -(logp.exp() * logp).sum(-1),
        "correct": logits.argmax(-1) == targets,
        "ref_kl": None,
    }
    if ref_hidden is not None:
        logq = torch.log_softmax(ref_hidden @ ref_weight.t(), dim=-1)
        out["ref_kl"] = (logp.exp() * (logp - logq)).sum(-1)
    return out


def leaf(t, requires_grad=True):
    return t.clone().requires_grad_(requires_grad)


def close(x, y, tol=TOL):
    return torch.allclose(x.float(), y.float(), atol=tol, rtol=0)


# ============================================================================================ hand check
def test_chunked_stats_on_a_tiny_hand_example():
    # one token, vocab 3, logits = [ln 1, ln 2, ln 5] -> p = [1/8, 2/8, 5/8]; target 1
    hidden = torch.tensor([[1.0]], requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(2.0)], [math.log(5.0)]], requires_grad=True)
    stats = chunked_token_stats(hidden, weight, torch.tensor([1]))
    assert isinstance(stats, TokenStats) and stats.ref_kl is None
    assert stats.logprobs.item() == pytest.approx(math.log(0.25), abs=1e-7)
    p = [1 / 8, 2 / 8, 5 / 8]
    assert stats.entropy.item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-7)
    assert stats.correct.tolist() == [False]
    stats.logprobs.sum().backward()
    # d log p_1 / d z = onehot(1) - p; z_j = W_j * h
    assert weight.grad.flatten().tolist() == pytest.approx([-1 / 8, 1 - 2 / 8, -5 / 8], abs=1e-7)
    expected_h = -1 / 8 * 0.0 + (1 - 2 / 8) * math.log(2.0) - 5 / 8 * math.log(5.0)
    assert hidden.grad.item() == pytest.approx(expected_h, abs=1e-6)


# ====================================================================================== chunked vs naive
@pytest.mark.parametrize("chunk_size", [1, 3, N, 4 * N])
def test_chunked_matches_naive_values_and_gradients(chunk_size):
    hidden, weight, targets, ref_hidden, ref_weight, a, b = make_problem()

    h1, w1 = leaf(hidden), leaf(weight)
    s1 = chunked_token_stats(h1, w1, targets, ref_hidden, ref_weight, chunk_size=chunk_size)
    ((s1.logprobs * a).sum() + (s1.ref_kl * b).sum()).backward()

    h2, w2 = leaf(hidden), leaf(weight)
    s2 = naive_token_stats(h2 @ w2.t(), targets, ref_hidden @ ref_weight.t())
    ((s2.logprobs * a).sum() + (s2.ref_kl * b).sum()).backward()

    h3, w3 = leaf(hidden), leaf(weight)
    s3 = hand_stats(h3, w3, targets, ref_hidden, ref_weight)
    ((s3["logprobs"] * a).sum() + (s3["ref_kl"] * b).sum()).backward()

    for s in (s1, s2):
        assert s.logprobs.dtype == s.entropy.dtype == s.ref_kl.dtype == torch.float32
        assert s.logprobs.shape == s.entropy.shape == s.correct.shape == s.ref_kl.shape == (N,)
        assert close(s.logprobs, s3["logprobs"])
        assert close(s.entropy, s3["entropy"])
        assert close(s.ref_kl, s3["ref_kl"])
        assert torch.equal(s.correct, s3["correct"])
        assert not s.entropy.requires_grad and not s.correct.requires_grad
    assert s1.correct[0].item() is True
    assert s1.ref_kl.min().item() > 0
    for g in (h1.grad, h2.grad):
        assert close(g, h3.grad)
    for g in (w1.grad, w2.grad):
        assert close(g, w3.grad)
    assert h3.grad.abs().max().item() > 1e-2 and w3.grad.abs().max().item() > 1e-2


@pytest.mark.parametrize("chunk_size", [1, 3, 4 * N])
def test_only_logprobs_need_grad(chunk_size):
    hidden, weight, targets, ref_hidden, ref_weight, a, _ = make_problem()
    h3, w3 = leaf(hidden), leaf(weight)
    (hand_stats(h3, w3, targets)["logprobs"] * a).sum().backward()

    # with a reference passed but ref_kl unused, and without a reference
    for ref in ((ref_hidden, ref_weight), (None, None)):
        h1, w1 = leaf(hidden), leaf(weight)
        s1 = chunked_token_stats(h1, w1, targets, *ref, chunk_size=chunk_size)
        (s1.logprobs * a).sum().backward()
        assert close(h1.grad, h3.grad) and close(w1.grad, w3.grad)

    # frozen head: only the hidden states get a gradient
    h1, w1 = leaf(hidden), leaf(weight, requires_grad=False)
    (chunked_token_stats(h1, w1, targets, chunk_size=chunk_size).logprobs * a).sum().backward()
    assert w1.grad is None and close(h1.grad, h3.grad)

    # frozen hidden states: only the head gets a gradient
    h1, w1 = leaf(hidden, requires_grad=False), leaf(weight)
    (chunked_token_stats(h1, w1, targets, chunk_size=chunk_size).logprobs * a).sum().backward()
    assert h1.grad is None and close(w1.grad, w3.grad)


def test_only_ref_kl_needs_grad():
    hidden, weight, targets, ref_hidden, ref_weight, _, b = make_problem()
    h1, w1 = leaf(hidden), leaf(weight)
    (chunked_token_stats(h1, w1, targets, ref_hidden, ref_weight, chunk_size=3).ref_kl * b).sum().backward()
    h3, w3 = leaf(hidden), leaf(weight)
    (hand_stats(h3, w3, targets, ref_hidden, ref_weight)["ref_kl"] * b).sum().backward()
    assert close(h1.grad, h3.grad) and close(w1.grad, w3.grad)


def test_reference_inputs_get_no_gradient():
    hidden, weight, targets, ref_hidden, ref_weight, a, b = make_problem()
    rh, rw = leaf(ref_hidden), leaf(ref_weight)
    s = chunked_token_stats(leaf(hidden), leaf(weight), targets, rh, rw, chunk_size=4)
    ((s.logprobs * a).sum() + (s.ref_kl * b).sum()).backward()
    assert rh.grad is None and rw.grad is None


def test_no_grad_inputs_give_plain_tensors():
    hidden, weight, targets, *_ = make_problem(with_ref=False)
    s = chunked_token_stats(hidden, weight, targets, chunk_size=4)
    assert not s.logprobs.requires_grad
    assert close(s.logprobs, hand_stats(hidden, weight, targets)["logprobs"])


# ========================================================================================= bf16 autocast
def test_bf16_autocast_gives_fp32_results_close_to_fp32():
    hidden, weight, targets, ref_hidden, ref_weight, a, b = make_problem()
    h3, w3 = leaf(hidden), leaf(weight)
    ref = hand_stats(h3, w3, targets, ref_hidden, ref_weight)
    ((ref["logprobs"] * a).sum() + (ref["ref_kl"] * b).sum()).backward()

    h1, w1 = leaf(hidden), leaf(weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = chunked_token_stats(h1, w1, targets, ref_hidden, ref_weight, chunk_size=3)
        loss = (s.logprobs * a).sum() + (s.ref_kl * b).sum()
    loss.backward()
    for t in (s.logprobs, s.entropy, s.ref_kl):
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
    assert close(s.logprobs, ref["logprobs"], 5e-2)
    assert close(s.entropy, ref["entropy"], 5e-2)
    assert close(s.ref_kl, ref["ref_kl"], 5e-2)
    assert h1.grad.dtype == w1.grad.dtype == torch.float32
    assert close(h1.grad, h3.grad, 5e-2) and close(w1.grad, w3.grad, 5e-2)
    # bf16 really was used: not bit-identical to the fp32 result
    assert not torch.equal(s.logprobs, ref["logprobs"].detach())


def test_bf16_autocast_multiplies_in_bf16_and_normalises_in_fp32():
    """Under autocast the head's matmul takes bf16 operands; the log-softmax is fp32 over those logits."""
    hidden, weight, targets, *_ = make_problem(with_ref=False)
    logits = (hidden.bfloat16() @ weight.bfloat16().t()).float()
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(N), targets]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = chunked_token_stats(hidden, weight, targets, chunk_size=4)
        alone = chunked_logprobs(hidden, weight, targets, chunk_size=4)
    assert stats.logprobs.dtype == alone.dtype == torch.float32
    assert close(stats.logprobs, expected, 1e-5) and torch.equal(alone, stats.logprobs)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("bf16", [False, True])
def test_kept_reference_logits_give_the_recomputed_gradients_bit_for_bit(direction, bf16, monkeypatch):
    """The reference's logits kept from forward (all, the first of 4 chunks, none) change no bit. With
    room for 4 rows only the first chunk is kept: the last chunk (1 row) fits in what is left, but
    backward takes kept chunk i for chunk i (keeping it ended in a shape error in backward)."""
    hidden, weight, targets, ref_hidden, ref_weight, a, b = make_problem()
    chunk = 3  # chunks of 3, 3, 3 and 1 tokens
    element = 2 if bf16 else 4
    grads = {}
    for budget in (2**28, chunk * V * element, (chunk + 1) * V * element, 0):
        monkeypatch.setattr(lm_head, "REF_LOGITS_BYTES", budget)
        h, w = leaf(hidden), leaf(weight)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            s = chunked_token_stats(h, w, targets, ref_hidden, ref_weight, chunk, direction)
            ((s.logprobs * a).sum() + (s.ref_kl * b).sum()).backward()
        grads[budget] = (s.ref_kl.detach(), h.grad, w.grad)
    first, *others = grads.values()
    for other in others:
        assert all(torch.equal(x, y) for x, y in zip(first, other, strict=True))


@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_logprobs_alone_equal_the_stats_logprobs_without_a_graph(chunk_size):
    hidden, weight, targets, *_ = make_problem(with_ref=False)
    h = leaf(hidden)
    alone = chunked_logprobs(h, weight, targets, chunk_size=chunk_size)
    stats = chunked_token_stats(h, weight, targets, chunk_size=chunk_size)
    assert torch.equal(alone, stats.logprobs.detach())  # bit-identical: PSFT's ratio is 1 at a refresh
    assert not alone.requires_grad
    assert close(alone, hand_stats(hidden, weight, targets)["logprobs"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_naive_logprobs_alone_equal_the_naive_stats_logprobs(dtype):
    # the fallback path of pi_old's forward (heads with a bias or soft-capping): no entropy computed
    hidden, weight, targets, *_ = make_problem(with_ref=False)
    logits = (hidden @ weight.t()).to(dtype)
    alone = naive_logprobs(logits, targets)
    assert alone.dtype == torch.float32 and torch.equal(alone, naive_token_stats(logits, targets).logprobs)
    assert close(
        alone, hand_stats(hidden, weight, targets)["logprobs"], 1e-5 if dtype == torch.float32 else 5e-2
    )


def test_naive_stats_upcast_bf16_logits_to_fp32():
    hidden, weight, targets, *_ = make_problem(with_ref=False)
    logits = (hidden @ weight.t()).to(torch.bfloat16)
    s = naive_token_stats(logits, targets, logits)
    assert s.logprobs.dtype == s.entropy.dtype == s.ref_kl.dtype == torch.float32
    assert s.ref_kl.abs().max().item() == 0.0
    assert close(s.logprobs, hand_stats(hidden, weight, targets)["logprobs"], 5e-2)


# ================================================================================================ errors
@pytest.mark.parametrize("chunk_size", [0, -1])
def test_chunk_size_below_one_raises(chunk_size):
    hidden, weight, targets, *_ = make_problem(with_ref=False)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_token_stats(hidden, weight, targets, chunk_size=chunk_size)


# ============================================================= full objectives through PSFTModule (tiny)
def objective_problem(objective: str):
    """A tiny-model module, a padded batch with prompts, and (for psft) old log-probs from a nearby model."""
    from psft_lightning.data.collate import collate
    from psft_lightning.data.formats import IGNORE_INDEX, Example
    from psft_lightning.module import PSFTModule
    from psft_lightning.policies import frozen

    module = PSFTModule(model="tiny", objective=objective, chunk_size=7)
    module.configure_model()
    g = torch.Generator().manual_seed(1)
    examples = []
    for n, prompt in ((19, 6), (11, 4), (27, 9)):
        ids = torch.randint(0, 256, (n,), generator=g).tolist()
        examples.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    batch = collate(examples, pad_id=258)
    nearby = frozen(module.policy)
    with torch.no_grad():
        for p in nearby.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    if module.reference is not None:
        module.reference = nearby  # a reference that really differs from the policy
    return module, batch, nearby


def naive_objective_inputs(module, batch, old_model):
    """The same per-token inputs from the full [tokens, vocab] logits, written with plain torch."""
    from psft_lightning.objectives import ObjectiveInputs

    targets = batch["labels"][:, 1:]
    mask = targets != -100
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    logp = torch.log_softmax(module.policy(**inputs, use_cache=False).logits[:, :-1][mask].float(), -1)
    logprobs = logp.gather(1, targets[mask][:, None]).squeeze(1)
    with torch.no_grad():
        other = torch.log_softmax(old_model(**inputs, use_cache=False).logits[:, :-1][mask].float(), -1)
    ref_kl = (logp.exp() * (logp - other)).sum(-1)
    old = other.gather(1, targets[mask][:, None]).squeeze(1)
    n = float(mask.sum())
    return ObjectiveInputs(
        logprobs, torch.ones_like(logprobs, dtype=torch.bool), num_tokens=n, old_logprobs=old, ref_kl=ref_kl
    )


@pytest.mark.parametrize("objective", ["ce", "kl", "psft"])
def test_objective_through_module_matches_naive_full_logits(objective):
    from psft_lightning.objectives import ObjectiveInputs

    module, batch, nearby = objective_problem(objective)
    naive_in = naive_objective_inputs(module, batch, nearby)
    naive = module.objective(naive_in)
    naive.loss.backward()
    naive_grads = [p.grad.clone() for p in module.policy.parameters()]
    module.policy.zero_grad()

    stats = module.token_stats(module.policy, batch, module.reference)
    with torch.no_grad():
        old = module.token_stats(nearby, batch).logprobs if objective == "psft" else None
    ours = module.objective(
        ObjectiveInputs(
            stats.logprobs,
            torch.ones_like(stats.logprobs, dtype=torch.bool),
            num_tokens=naive_in.num_tokens,
            old_logprobs=old,
            ref_kl=stats.ref_kl,
        )
    )
    ours.loss.backward()

    assert stats.logprobs.numel() == 57 - 19  # loss tokens: (19-6) + (11-4) + (27-9)
    assert close(stats.logprobs, naive_in.logprobs)
    assert ours.loss.item() == pytest.approx(naive.loss.item(), abs=TOL)
    for name in ours.metrics:
        assert ours.metrics[name].item() == pytest.approx(naive.metrics[name].item(), abs=TOL), name
    if objective == "kl":
        assert close(stats.ref_kl, naive_in.ref_kl) and naive_in.ref_kl.min().item() > 1e-4
    if objective == "psft":
        assert close(old, naive_in.old_logprobs)
        assert naive.metrics["psft/clip_frac_high"].item() + naive.metrics["psft/clip_frac_low"].item() > 0
    for (name, p), want in zip(module.policy.named_parameters(), naive_grads, strict=True):
        assert close(p.grad, want), name
    assert max(g.abs().max().item() for g in naive_grads) > 1e-3


def test_auto_chunk_size_keeps_a_chunk_near_128_mib_and_matches_naive():
    from psft_lightning.ops import auto_chunk_size

    assert auto_chunk_size(152064) == 220 and auto_chunk_size(49152) == 682 and auto_chunk_size(10**8) == 16
    hidden, weight, targets, *_ = make_problem(with_ref=False)
    auto = chunked_token_stats(hidden, weight, targets)  # chunk_size None: auto (one chunk here)
    assert close(auto.logprobs, hand_stats(hidden, weight, targets)["logprobs"])
