"""The LM head's reused scratch buffers (ops.scratch) and the steps that write into them: the same bits
as fresh tensors, whatever a previous call left in the buffers."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from psft_lightning.ops import chunked_logprobs, chunked_token_stats, lm_head
from psft_lightning.ops.scratch import Scratch, scratch_for

N, H, V = 11, 16, 40


def test_take_reuses_a_buffer_and_grows_it_only_when_asked_for_more():
    scratch = Scratch()
    a = scratch.take("x", (4, 5), torch.float32, torch.device("cpu"))
    b = scratch.take("x", (2, 5), torch.float32, torch.device("cpu"))
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 5)
    c = scratch.take("x", (5, 5), torch.float32, torch.device("cpu"))
    assert c.data_ptr() != a.data_ptr() and scratch.nbytes() == 25 * 4
    d = scratch.take("x", (5, 5), torch.bfloat16, torch.device("cpu"))  # another dtype: a new buffer
    assert d.dtype == torch.bfloat16 and scratch.nbytes() == 25 * 2


def test_cast_copies_into_the_buffer_and_passes_a_tensor_of_that_dtype_through():
    scratch, x = Scratch(), torch.randn(3, 4)
    assert scratch.cast("w", x, torch.float32) is x
    y = scratch.cast("w", x, torch.bfloat16)
    assert torch.equal(y, x.to(torch.bfloat16)) and scratch.nbytes() == 12 * 2


def test_each_thread_has_its_own_cpu_buffers():
    mine, theirs = scratch_for(torch.device("cpu")), []
    thread = threading.Thread(target=lambda: theirs.append(scratch_for(torch.device("cpu"))))
    thread.start()
    thread.join()
    assert scratch_for(torch.device("cpu")) is mine and theirs[0] is not mine


def test_logsumexp_into_a_temporary_equals_torch_bit_for_bit():
    x = torch.randn(6, 300) * 30
    x[1] = -math.inf  # a row of -inf: torch's answer is -inf (its max is masked to 0)
    x[2, 7] = math.inf
    x[3] = 1e30
    got = lm_head._logsumexp(x, torch.full_like(x, 123.0))
    assert torch.equal(got, torch.logsumexp(x, -1))


def _stats_and_grads(hidden, weight, targets, ref_hidden, ref_weight, bf16, chunk):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        s = chunked_token_stats(h, w, targets, ref_hidden, ref_weight, chunk)
        (s.logprobs.sum() * 0.7 + s.ref_kl.sum() * 0.3).backward()
        alone = chunked_logprobs(hidden, weight, targets, chunk)
    return [s.logprobs, s.entropy, s.correct, s.ref_kl, h.grad, w.grad, alone]


@pytest.mark.parametrize("bf16", [False, True])
def test_a_call_after_a_larger_one_gives_the_same_bits(bf16, monkeypatch):
    """Buffers left dirty (and larger) by a call on other data change nothing; bf16 matmuls in row
    blocks of 4 tokens (``MM_ROWS``) give the bits of whole ones."""
    monkeypatch.setattr(lm_head, "REF_LOGITS_BYTES", 4 * V * 2)  # a kept chunk and recomputed ones
    hidden, weight = torch.randn(N, H), torch.randn(V, H)
    ref_hidden, ref_weight = hidden + 0.1 * torch.randn(N, H), weight + 0.1 * torch.randn(V, H)
    targets = torch.randint(0, V, (N,))
    problem = (hidden, weight, targets, ref_hidden, ref_weight, bf16, 4)
    first = _stats_and_grads(*problem)
    big = torch.randn(3 * N, H) * 5
    _stats_and_grads(big, weight * 2, torch.randint(0, V, (3 * N,)), big, weight, bf16, 8)
    monkeypatch.setattr(lm_head, "MM_ROWS", 3)
    again = _stats_and_grads(*problem)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert scratch_for(torch.device("cpu")).nbytes() > 0  # the buffers were kept between calls
