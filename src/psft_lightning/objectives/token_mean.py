"""Token-mean reductions every objective uses: one normaliser for the optimizer step, masked sums in fp32.

Metric values are contributions already divided by ``num_tokens``, so sums over micro-batches and ranks
give the exact token-mean of the step. Importable from here or, as plugins do, from ``objectives.base``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normaliser(mask: Tensor, num_tokens: float | Tensor | None) -> Tensor:
    """The token count a loss is divided by: the mask's, or the whole optimizer step's when given."""
    denom = (
        mask.sum(dtype=torch.float32)
        if num_tokens is None
        else torch.as_tensor(num_tokens, dtype=torch.float32, device=mask.device)
    )
    if float(denom) <= 0:
        raise ValueError(
            "This batch has no loss tokens (every label is -100), so its loss is undefined. "
            "Check that responses are not empty and not truncated away by max_length."
        )
    return denom


def masked_contribution(values: Tensor, mask: Tensor, denom: Tensor) -> Tensor:
    """Sum of ``values`` over ``mask`` divided by ``denom``, in fp32."""
    return (values.float() * mask.float()).sum() / denom


def nll_loss(logprobs: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None) -> tuple[Tensor, dict]:
    """Token-mean negative log-likelihood: SFT as policy gradient with advantage 1."""
    denom = normaliser(mask, num_tokens)
    loss = masked_contribution(-logprobs, mask, denom)
    return loss, {"train/nll": loss.detach()}
