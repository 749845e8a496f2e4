"""Per-token statistics of an LM head, computed in chunks of tokens.

Only loss positions are passed in (the caller drops -100 positions before the head), and the
``[tokens, vocab]`` logits exist one chunk at a time, in fp32, in forward and again in backward
(recomputation instead of storage; only a KL reference's logits are kept, up to a fixed size). On CPU
the chunk buffers are reused across chunks and steps (``ops/scratch.py``): fresh 128 MiB allocations
cost page faults that made the PSFT and KL steps slower than their floors. The full-logits version in
``ops/full_logits.py`` is the reference for tests and benchmarks, and the fallback for heads this kernel
does not cover (bias, logit soft-capping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from psft_lightning.ops.scratch import Scratch, scratch_for

KLDirection = Literal["reverse", "forward"]
CHUNK_ELEMENTS = 2**25  # one [chunk, vocab] fp32 buffer of about 128 MiB
# the reference's logits (in the matmul's dtype) kept from forward up to this size, so backward need not
# recompute them: one head matmul of the KL step saved for short batches, memory bounded for long ones
REF_LOGITS_BYTES = 2**28
# bf16 logits are multiplied out this many tokens at a time: on a 2-core AVX-512 EPYC a [682, 576] x
# [576, 49152] bf16 matmul took 170 ms whole and 110 ms in blocks of 256 rows, with the same bits
MM_ROWS = 256


def auto_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk of fp32 logits stays near ``CHUNK_ELEMENTS`` elements
    (about 128 MiB: 220 tokens at a 152k vocabulary, 680 at 49k), large enough for efficient matmuls."""
    return max(16, CHUNK_ELEMENTS // vocab_size)


@dataclass
class TokenStats:
    """Flat per-token tensors over the loss positions, fp32."""

    logprobs: Tensor  # log pi(target), differentiable
    entropy: Tensor  # entropy of pi over the vocabulary, detached
    correct: Tensor  # argmax == target, bool
    ref_kl: Tensor | None = None  # KL to pi_ref over the vocabulary (either direction), differentiable
    vocab: Tensor | None = None  # values of a full-vocabulary function (ops.vocab), differentiable


def check_direction(direction: str) -> None:
    if direction not in ("reverse", "forward"):
        raise ValueError(f"kl_direction must be 'reverse' or 'forward', got {direction!r}")


def _chunk_logits(hidden: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """Logits of one chunk in the compute dtype (``weight`` is already cast), upcast to >= fp32."""
    z = hidden.to(dtype) @ weight.t()
    return z.to(torch.promote_types(z.dtype, torch.float32))


def compute_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype the head's matmuls run in: autocast's (bf16 under bf16-mixed), else the hidden states'."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return hidden.dtype


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product without a [rows, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _head_matmul(hidden: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """``hidden @ w.t()`` into ``out``; in bf16 by blocks of ``MM_ROWS`` tokens (the same bits)."""
    if w.dtype != torch.bfloat16:
        return torch.mm(hidden, w.t(), out=out)
    for rows in _chunks(hidden.shape[0], MM_ROWS):
        torch.mm(hidden[rows], w.t(), out=out[rows])
    return out


def _logits_into(scratch: Scratch, name: str, hidden: Tensor, w: Tensor, dtype: torch.dtype) -> Tensor:
    """One chunk's logits, upcast to >= fp32, into ``scratch[name]`` (through ``scratch["mm"]`` when it
    upcasts)."""
    acc_dtype = torch.promote_types(dtype, torch.float32)
    shape = (hidden.shape[0], w.shape[0])
    out = scratch.take(name if dtype == acc_dtype else "mm", shape, dtype, hidden.device)
    z = _head_matmul(hidden.to(dtype), w, out)
    return z if dtype == acc_dtype else scratch.take(name, shape, acc_dtype, hidden.device).copy_(z)


def _logsumexp(x: Tensor, tmp: Tensor) -> Tensor:
    """``torch.logsumexp(x, -1)`` bit for bit (ATen's own steps), with ``tmp`` as its [rows, V] temporary
    instead of a fresh one."""
    maxes = torch.amax(x, -1, keepdim=True)
    maxes.masked_fill_(maxes.abs() == math.inf, 0)
    return torch.sub(x, maxes, out=tmp).exp_().sum(-1).log_().add_(maxes.squeeze(1))


class _ChunkedHeadStats(torch.autograd.Function):
    """Forward keeps only per-token values and the log-sum-exps (and the reference's logits up to
    ``REF_LOGITS_BYTES``); backward recomputes each chunk's logits once and turns them into the logit
    gradient in place (about two [chunk, V] buffers)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ref_hidden, ref_weight, chunk_size, forward_kl):
        dtype = compute_dtype(hidden)
        n, device = hidden.shape[0], hidden.device
        acc_dtype = torch.promote_types(dtype, torch.float32)
        logprobs = hidden.new_empty(n, dtype=acc_dtype)
        entropy, lse = torch.empty_like(logprobs), torch.empty_like(logprobs)
        correct = torch.empty(n, dtype=torch.bool, device=device)
        with_ref = ref_hidden is not None
        ref_kl, ref_lse = torch.zeros_like(logprobs), torch.zeros_like(logprobs)
        scratch = scratch_for(device)
        w = scratch.cast("w", weight, dtype)  # cast once, not per chunk
        ref_w = scratch.cast("ref_w", ref_weight, dtype) if with_ref else None
        ref_logits: list[Tensor] = []  # the reference's first chunks of logits, kept for backward
        kept_bytes = 0
        with torch.autocast(device.type, enabled=False):
            for i, sl in enumerate(_chunks(n, chunk_size)):
                logp = _logits_into(scratch, "logp", hidden[sl], w, dtype)
                p = scratch.take("p", logp.shape, acc_dtype, device)
                lse[sl] = _logsumexp(logp, p)
                correct[sl] = logp.argmax(-1) == targets[sl]
                logp.sub_(lse[sl, None])
                logprobs[sl] = logp.gather(1, targets[sl, None]).squeeze(1)
                entropy[sl] = -_rowdot(torch.exp(logp, out=p), logp)
                if not with_ref:
                    continue
                # only a prefix of the chunks is kept: backward takes kept chunk i for chunk i
                kept_bytes += logp.numel() * dtype.itemsize
                if len(ref_logits) == i and kept_bytes <= REF_LOGITS_BYTES:
                    raw = _head_matmul(ref_hidden[sl].to(dtype), ref_w, torch.empty_like(logp, dtype=dtype))
                    ref_logits.append(raw)
                    logq = scratch.take("logq", logp.shape, acc_dtype, device).copy_(raw)
                else:
                    logq = _logits_into(scratch, "logq", ref_hidden[sl], ref_w, dtype)
                q = scratch.take("q", logp.shape, acc_dtype, device)
                ref_lse[sl] = _logsumexp(logq, q)
                if forward_kl:  # KL(q || p) = sum q (log q - log p)
                    logq.sub_(ref_lse[sl, None])
                    ref_kl[sl] = _rowdot(torch.exp(logq, out=q), logq.sub_(logp))
                else:
                    ref_kl[sl] = _rowdot(p, logq.sub_(ref_lse[sl, None]).neg_().add_(logp))
        ctx.save_for_backward(hidden, weight, targets, ref_hidden, ref_weight, ref_kl, lse, ref_lse)
        ctx.chunk_size = chunk_size
        ctx.ref_logits = ref_logits
        ctx.dtype = dtype
        ctx.with_ref = with_ref
        ctx.forward_kl = forward_kl
        ctx.mark_non_differentiable(entropy, correct)
        return logprobs, entropy, correct, ref_kl

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy, _grad_correct, grad_ref_kl):
        hidden, weight, targets, ref_hidden, ref_weight, ref_kl, lse, ref_lse = ctx.saved_tensors
        dtype, device = ctx.dtype, hidden.device
        acc_dtype = torch.promote_types(dtype, torch.float32)
        scratch = scratch_for(device)
        grad_hidden, grad_weight, w = grad_buffers(ctx, hidden, weight, scratch)
        use_kl = ctx.with_ref and grad_ref_kl is not None
        chunks = list(_chunks(hidden.shape[0], ctx.chunk_size))
        kept = ctx.ref_logits if use_kl else []
        ref_w = scratch.cast("ref_w", ref_weight, dtype) if use_kl and len(kept) < len(chunks) else None
        with torch.autocast(device.type, enabled=False):
            for i, sl in enumerate(chunks):
                logp = _logits_into(scratch, "logp", hidden[sl], w, dtype).sub_(lse[sl, None])
                if use_kl:
                    if i < len(kept):
                        logq = scratch.take("logq", logp.shape, acc_dtype, device).copy_(kept[i])
                    else:
                        logq = _logits_into(scratch, "logq", ref_hidden[sl], ref_w, dtype)
                    logq.sub_(ref_lse[sl, None])
                if use_kl and ctx.forward_kl:
                    # d KL(q || p) / d z = p - q
                    grad_z = logq.exp_().neg_()
                    p = logp.exp_()
                    grad_z.add_(p).mul_(grad_ref_kl[sl, None].to(acc_dtype))
                elif use_kl:
                    # d KL / d z = p * (logp - logq - KL)
                    grad_z = (
                        logq.neg_()
                        .add_(logp)
                        .sub_(ref_kl[sl, None])
                        .mul_(grad_ref_kl[sl, None].to(acc_dtype))
                    )
                    p = logp.exp_()
                    grad_z.mul_(p)
                else:
                    p = logp.exp_()
                    grad_z = None
                if grad_logprobs is not None:
                    # d log p_target / d z = onehot(target) - p
                    g = grad_logprobs[sl, None].to(acc_dtype)
                    grad_z = p.mul_(-g) if grad_z is None else grad_z.addcmul_(p, g, value=-1.0)
                    grad_z.scatter_add_(1, targets[sl, None], g)
                if grad_z is None:
                    continue
                backprop_chunk(grad_z, sl, w, hidden, grad_hidden, grad_weight, dtype, scratch)
        return head_grads(ctx, grad_hidden, grad_weight, weight)


def grad_buffers(
    ctx, hidden: Tensor, weight: Tensor, scratch: Scratch
) -> tuple[Tensor | None, Tensor, Tensor]:
    """Zeroed gradients of the hidden states (if wanted) and of the head (fp32 or wider), and the head
    weight in the compute dtype (in ``scratch``), for a chunked backward."""
    acc_dtype = torch.promote_types(ctx.dtype, torch.float32)
    grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
    grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
    return grad_hidden, grad_weight, scratch.cast("w", weight, ctx.dtype)


def head_grads(ctx, grad_hidden: Tensor | None, grad_weight: Tensor, weight: Tensor) -> tuple:
    """The backward's outputs: the hidden-state and head-weight gradients, None for the other inputs."""
    grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
    return grad_hidden, grad_weight, None, None, None, None, None


def backprop_chunk(
    grad_z: Tensor,
    sl: slice,
    w: Tensor,
    hidden: Tensor,
    grad_hidden: Tensor | None,
    grad_weight: Tensor,
    dtype: torch.dtype,
    scratch: Scratch,
) -> None:
    """Chain one chunk's logit gradient into ``grad_hidden[sl]`` and ``grad_weight`` (in place); the
    compute-dtype copies live in ``scratch`` (the chunk's matmul buffer is free by now)."""
    grad_z = scratch.cast("mm", grad_z, dtype)
    if grad_hidden is not None:
        grad_hidden[sl] = (grad_z @ w).to(hidden.dtype)
    partial = scratch.take("grad_w", tuple(w.shape), dtype, w.device)
    grad_weight += torch.mm(grad_z.t(), hidden[sl].to(dtype), out=partial)


def chunked_token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    chunk_size: int | None = None,
    kl_direction: KLDirection = "reverse",
) -> TokenStats:
    """Stats for ``hidden [N, H]`` through the head ``weight [V, H]`` at ``targets [N]``.

    With ``ref_hidden``/``ref_weight`` (no grad) it also returns the exact per-token KL to the reference:
    KL(pi || pi_ref) for ``kl_direction`` ``reverse``, KL(pi_ref || pi) for ``forward``.
    Memory is O(chunk_size * V) instead of O(N * V); log-softmax is fp32 even under bf16 autocast.
    ``chunk_size`` None picks ``auto_chunk_size(V)``.
    """
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_direction(kl_direction)
    if ref_hidden is not None:
        ref_hidden, ref_weight = ref_hidden.detach(), ref_weight.detach()
    logprobs, entropy, correct, ref_kl = _ChunkedHeadStats.apply(
        hidden, weight, targets, ref_hidden, ref_weight, chunk_size, kl_direction == "forward"
    )
    return TokenStats(logprobs, entropy, correct, ref_kl if ref_hidden is not None else None)


@torch.no_grad()
def chunked_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int | None = None
) -> Tensor:
    """log pi(target) alone, without a graph: pi_old's and a lookahead's forward need nothing else (no
    entropy, accuracy or saved tensors). The same numbers as ``chunked_token_stats(...).logprobs``."""
    dtype = compute_dtype(hidden)
    scratch = scratch_for(hidden.device)
    w = scratch.cast("w", weight, dtype)
    logprobs = hidden.new_empty(hidden.shape[0], dtype=torch.promote_types(dtype, torch.float32))
    with torch.autocast(hidden.device.type, enabled=False):
        for sl in _chunks(hidden.shape[0], chunk_size or auto_chunk_size(weight.shape[0])):
            z = _logits_into(scratch, "logp", hidden[sl], w, dtype)
            tmp = scratch.take("p", z.shape, z.dtype, z.device)
            logprobs[sl] = z.gather(1, targets[sl, None]).squeeze(1) - _logsumexp(z, tmp)
    return logprobs
