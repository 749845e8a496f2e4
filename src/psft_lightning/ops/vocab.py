"""A user's per-token function of the full next-token distribution, evaluated without full logits.

``fn(logits, ref_logits, targets)`` sees one chunk of tokens at a time: fp32 ``[c, V]`` logits of the
policy, the frozen reference's (or None) and the ``[c]`` targets, and returns per-token values ``[c]``
(or ``[c, k]``). Forward keeps only those values; backward recomputes each chunk's logits, runs the
function again under autograd and turns its gradient into the hidden-state and head-weight gradients
(the pattern of ``lm_head._ChunkedHeadStats``), so ``[tokens, vocab]`` logits never exist at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from psft_lightning.ops.lm_head import (
    _chunk_logits,
    _chunks,
    auto_chunk_size,
    backprop_chunk,
    compute_dtype,
    grad_buffers,
    head_grads,
)
from psft_lightning.ops.scratch import scratch_for

# (policy logits [c, V] fp32, reference logits [c, V] fp32 or None, targets [c]) -> per-token values [c, ...]
VocabFn = Callable[[Tensor, Tensor | None, Tensor], Tensor]

# A plain PyTorch function keeps several [c, V] temporaries alive (softmax, its log, products, and their
# gradients in backward) where the fused kernel keeps two or three, so its chunks are this much smaller.
CHUNK_DIVISOR = 4


class _ChunkedVocabFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ref_hidden, ref_weight, fn, chunk_size):
        dtype = compute_dtype(hidden)
        w = weight.to(dtype)
        ref_w = ref_weight.to(dtype) if ref_hidden is not None else None
        values = []
        with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
            for sl in _chunks(hidden.shape[0], chunk_size):
                ref = _chunk_logits(ref_hidden[sl], ref_w, dtype) if ref_w is not None else None
                values.append(fn(_chunk_logits(hidden[sl], w, dtype), ref, targets[sl]))
        ctx.save_for_backward(hidden, weight, targets, ref_hidden, ref_weight)
        ctx.fn, ctx.chunk_size, ctx.dtype = fn, chunk_size, dtype
        return torch.cat(values)

    @staticmethod
    def backward(ctx, grad_values):
        hidden, weight, targets, ref_hidden, ref_weight = ctx.saved_tensors
        dtype = ctx.dtype
        scratch = scratch_for(hidden.device)
        grad_hidden, grad_weight, w = grad_buffers(ctx, hidden, weight, scratch)
        ref_w = ref_weight.to(dtype) if ref_hidden is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for sl in _chunks(hidden.shape[0], ctx.chunk_size):
                with torch.no_grad():
                    ref = _chunk_logits(ref_hidden[sl], ref_w, dtype) if ref_w is not None else None
                    logits = _chunk_logits(hidden[sl], w, dtype)
                logits.requires_grad_(True)
                with torch.enable_grad():
                    values = ctx.fn(logits, ref, targets[sl])
                    if not values.requires_grad:
                        continue  # a detached function of the logits: no gradient
                    (grad_z,) = torch.autograd.grad(values, logits, grad_values[sl].to(values.dtype))
                del logits, values
                backprop_chunk(grad_z, sl, w, hidden, grad_hidden, grad_weight, dtype, scratch)
        return head_grads(ctx, grad_hidden, grad_weight, weight)


def chunked_vocab_values(
    fn: VocabFn,
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``fn`` at every token of ``hidden [N, H]`` through the head ``weight [V, H]``, differentiable.

    ``ref_hidden``/``ref_weight`` (no grad) give ``fn`` the reference's logits. Memory is
    O(chunk_size * V); ``chunk_size`` None is ``auto_chunk_size(V) // CHUNK_DIVISOR``.
    """
    if chunk_size is None:
        chunk_size = max(1, auto_chunk_size(weight.shape[0]) // CHUNK_DIVISOR)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if ref_hidden is not None:
        ref_hidden, ref_weight = ref_hidden.detach(), ref_weight.detach()
    return _ChunkedVocabFn.apply(hidden, weight, targets, ref_hidden, ref_weight, fn, chunk_size)


def naive_vocab_values(
    fn: VocabFn, logits: Tensor, targets: Tensor, ref_logits: Tensor | None = None
) -> Tensor:
    """The same values from full ``[N, V]`` logits (reference implementation, and fallback path)."""
    acc_dtype = torch.promote_types(logits.dtype, torch.float32)
    ref = ref_logits.detach().to(acc_dtype) if ref_logits is not None else None
    return fn(logits.to(acc_dtype), ref, targets)
