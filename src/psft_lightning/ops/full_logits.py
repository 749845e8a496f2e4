"""Per-token statistics from full ``[tokens, vocab]`` logits: the reference the chunked kernel in
``ops/lm_head.py`` is tested against, and the fallback for heads it does not cover (bias, logit
soft-capping)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from psft_lightning.ops.lm_head import KLDirection, TokenStats, check_direction


def _log_softmax(logits: Tensor) -> Tensor:
    """Full log-probabilities, accumulated in fp32 at least."""
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def naive_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """``naive_token_stats(...).logprobs`` alone (pi_old's forward needs nothing else)."""
    return _log_softmax(logits).gather(1, targets[:, None]).squeeze(1)


def naive_token_stats(
    logits: Tensor, targets: Tensor, ref_logits: Tensor | None = None, kl_direction: KLDirection = "reverse"
) -> TokenStats:
    """The same stats from full ``[N, V]`` logits (reference implementation, and fallback path)."""
    check_direction(kl_direction)
    logp = _log_softmax(logits)
    logprobs = logp.gather(1, targets[:, None]).squeeze(1)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
        correct = logits.argmax(-1) == targets
    ref_kl = None
    if ref_logits is not None:
        logq = _log_softmax(ref_logits.detach())
        if kl_direction == "forward":
            ref_kl = (logq.exp() * (logq - logp)).sum(-1)
        else:
            ref_kl = (logp.exp() * (logp - logq)).sum(-1)
    return TokenStats(logprobs, entropy, correct, ref_kl)
