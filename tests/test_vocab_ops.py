"""The forward KL of the chunked head and the vocabulary-level plugin path (``ops.chunked_vocab_values``)
against naive full-logits computations: values and gradients at 1e-5 in fp32."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from psft_lightning.ops import (
    chunked_token_stats,
    chunked_vocab_values,
    naive_token_stats,
    naive_vocab_values,
)

N, H, V = 10, 16, 50
TOL = 1e-5


def make_problem():
    hidden = torch.randn(N, H) * 0.5
    weight = torch.randn(V, H)
    targets = torch.randint(0, V, (N,))
    ref_hidden = hidden + torch.randn(N, H) * 0.1
    ref_weight = weight + torch.randn(V, H) * 0.1
    return hidden, weight, targets, ref_hidden, ref_weight, torch.randn(N)


def leaf(t):
    return t.clone().requires_grad_(True)


def close(x, y, tol=TOL):
    return torch.allclose(x, y, atol=tol, rtol=0), (x - y).abs().max().item()


def test_forward_kl_on_two_token_vocab_by_hand():
    # policy logits [0, ln 3] -> p = [1/4, 3/4]; reference logits [0, 0] -> q = [1/2, 1/2]
    hidden = torch.ones(1, 1, requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3.0)]], requires_grad=True)
    stats = chunked_token_stats(
        hidden, weight, torch.tensor([1]), torch.ones(1, 1), torch.zeros(2, 1), 1, "forward"
    )
    hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(q || p)
    assert stats.ref_kl.item() == pytest.approx(hand, abs=1e-7)
    stats.ref_kl.sum().backward()
    # d KL(q || p) / d z = p - q = [-1/4, 1/4]; z = W h with h = 1
    assert weight.grad.flatten().tolist() == pytest.approx([-0.25, 0.25], abs=1e-7)
    assert hidden.grad.item() == pytest.approx(0.25 * math.log(3.0), abs=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 3, 4 * N])
def test_forward_kl_chunked_matches_full_logits(chunk_size):
    hidden, weight, targets, ref_hidden, ref_weight, a = make_problem()
    h1, w1 = leaf(hidden), leaf(weight)
    s1 = chunked_token_stats(h1, w1, targets, ref_hidden, ref_weight, chunk_size, "forward")
    (s1.ref_kl * a).sum().backward()
    h2, w2 = leaf(hidden), leaf(weight)
    logp = torch.log_softmax(h2 @ w2.t(), -1)
    logq = torch.log_softmax(ref_hidden @ ref_weight.t(), -1)
    hand = (logq.exp() * (logq - logp)).sum(-1)
    (hand * a).sum().backward()
    assert close(s1.ref_kl, hand.detach())[0]
    assert close(h1.grad, h2.grad)[0] and close(w1.grad, w2.grad)[0]
    naive = naive_token_stats(hidden @ weight.t(), targets, ref_hidden @ ref_weight.t(), "forward")
    assert close(naive.ref_kl, hand.detach())[0]
    # the reverse direction is a different number on the same problem
    reverse = chunked_token_stats(hidden, weight, targets, ref_hidden, ref_weight, chunk_size).ref_kl
    assert (reverse - s1.ref_kl).abs().max() > 1e-3


def test_unknown_kl_direction_is_refused():
    hidden, weight, targets, *_ = make_problem()
    with pytest.raises(ValueError, match="kl_direction"):
        chunked_token_stats(hidden, weight, targets, kl_direction="both")


def reverse_kl_fn(logits, ref_logits, targets):
    logp = F.log_softmax(logits, -1)
    return (logp.exp() * (logp - F.log_softmax(ref_logits, -1))).sum(-1)


def target_mix_fn(logits, ref_logits, targets):
    """Cross-entropy against softmax(log q + 2 onehot(y)): a GIFT-shaped per-token loss."""
    target = F.log_softmax(ref_logits, -1).scatter_add(
        1, targets[:, None], torch.full_like(logits[:, :1], 2.0)
    )
    return -(target.softmax(-1) * F.log_softmax(logits, -1)).sum(-1)


def two_values_fn(logits, ref_logits, targets):
    """Two values per token, without a reference: log p(y) and the logit margin over the mean."""
    logp = F.log_softmax(logits, -1)
    return torch.stack(
        [logp.gather(1, targets[:, None]).squeeze(1), logits.max(-1).values - logits.mean(-1)], -1
    )


@pytest.mark.parametrize("chunk_size", [1, 4, 4 * N])
@pytest.mark.parametrize(
    ("fn", "with_ref"), [(reverse_kl_fn, True), (target_mix_fn, True), (two_values_fn, False)]
)
def test_vocab_path_matches_naive_full_logits(fn, with_ref, chunk_size):
    hidden, weight, targets, ref_hidden, ref_weight, a = make_problem()
    ref = (ref_hidden, ref_weight) if with_ref else (None, None)
    h1, w1 = leaf(hidden), leaf(weight)
    got = chunked_vocab_values(fn, h1, w1, targets, *ref, chunk_size=chunk_size)
    h2, w2 = leaf(hidden), leaf(weight)
    want = naive_vocab_values(fn, h2 @ w2.t(), targets, ref_hidden @ ref_weight.t() if with_ref else None)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert close(got, want.detach())[0]
    upstream = a if got.ndim == 1 else torch.stack([a, a.flip(0)], -1)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert close(h1.grad, h2.grad)[0] and close(w1.grad, w2.grad)[0]
    assert h2.grad.abs().max() > 1e-2 and w2.grad.abs().max() > 1e-2


def test_vocab_path_reverse_kl_equals_the_builtin_kernel():
    hidden, weight, targets, ref_hidden, ref_weight, a = make_problem()
    h1, w1 = leaf(hidden), leaf(weight)
    (chunked_vocab_values(reverse_kl_fn, h1, w1, targets, ref_hidden, ref_weight, 3) * a).sum().backward()
    h2, w2 = leaf(hidden), leaf(weight)
    (chunked_token_stats(h2, w2, targets, ref_hidden, ref_weight, 3).ref_kl * a).sum().backward()
    assert close(h1.grad, h2.grad)[0] and close(w1.grad, w2.grad)[0]


def test_vocab_path_detached_function_and_frozen_head():
    hidden, weight, targets, *_, a = make_problem()
    h1 = leaf(hidden)
    detached = chunked_vocab_values(
        lambda z, r, y: z.detach().max(-1).values, h1, weight, targets, chunk_size=3
    )
    assert torch.allclose(detached, (hidden @ weight.t()).max(-1).values)
    (detached * a).sum().backward()
    assert h1.grad.abs().max() == 0  # the function took no gradient from the logits
    h2 = leaf(hidden)
    (chunked_vocab_values(two_values_fn, h2, weight, targets, chunk_size=3)[:, 0] * a).sum().backward()
    h3 = leaf(hidden)
    (F.log_softmax(h3 @ weight.t(), -1).gather(1, targets[:, None]).squeeze(1) * a).sum().backward()
    assert close(h2.grad, h3.grad)[0]
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_vocab_values(two_values_fn, hidden, weight, targets, chunk_size=0)


def test_vocab_path_under_bf16_autocast_gives_fp32_values_close_to_fp32():
    hidden, weight, targets, ref_hidden, ref_weight, a = make_problem()
    h0 = leaf(hidden)
    exact = chunked_vocab_values(target_mix_fn, h0, weight, targets, ref_hidden, ref_weight, 3)
    (exact * a).sum().backward()
    exact = exact.detach()
    h1, w1 = leaf(hidden), leaf(weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_vocab_values(target_mix_fn, h1, w1, targets, ref_hidden, ref_weight, 3)
    assert got.dtype == torch.float32
    assert torch.allclose(got, exact, atol=0.1, rtol=0.02) and not torch.equal(got, exact)
    (got * a).sum().backward()
    assert h1.grad.dtype == torch.float32 and w1.grad.dtype == torch.float32
    assert torch.allclose(h1.grad, h0.grad, atol=0.05 * h0.grad.abs().max().item(), rtol=0)
