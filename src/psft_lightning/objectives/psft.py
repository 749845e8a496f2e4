"""Proximal SFT (arXiv 2508.17784): PPO's clipped surrogate with advantage 1 against a frozen old policy."""

from __future__ import annotations

import torch
from torch import Tensor

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import masked_contribution, nll_loss, normaliser

LOG_RATIO_CLAMP = 20.0


def psft_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PSFT loss and its diagnostics, for tensors of any shape (``[batch, seq]`` or flat tokens).

    r_t = exp(log pi - log pi_old) in fp32 (log-ratio clamped to +-20, as verl does);
    loss = -sum_t min(r_t, clip(r_t, 1 - clip_low, 1 + clip_high)) * mask_t / num_tokens.
    With advantage 1 only the upper clip removes gradient: tokens with r_t > 1 + clip_high stop
    learning. ``num_tokens`` defaults to ``mask.sum()`` (token-mean); the module passes the loss-token
    count of the whole optimizer step so accumulation and data parallelism keep the exact token-mean.
    """
    loss, metrics, _ = psft_terms(logprobs, old_logprobs, mask, clip_low, clip_high, num_tokens)
    return loss, metrics


def psft_terms(
    logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    num_tokens: float | Tensor | None,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``psft_loss`` plus its per-token ratios and upper-clip flags (detached, already computed)."""
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"psft_loss needs logprobs, old_logprobs and mask of one shape, got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}"
        )
    denom = normaliser(mask, num_tokens)
    mask = mask.bool()
    log_ratio = (logprobs.float() - old_logprobs.detach().float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surrogate = torch.minimum(ratio, clipped)
    loss = masked_contribution(-surrogate, mask, denom)
    with torch.no_grad():
        ratio_d = ratio.detach()
        high = ratio_d > 1.0 + clip_high
        metrics = {
            "psft/clip_frac_high": masked_contribution(high, mask, denom),
            "psft/clip_frac_low": masked_contribution(ratio_d < 1.0 - clip_low, mask, denom),
            "psft/ratio_mean": masked_contribution(ratio_d, mask, denom),
            "psft/ratio_max": ratio_d.masked_fill(~mask, 0.0).max() if mask.any() else ratio_d.new_ones(()),
            "psft/approx_kl": masked_contribution(-log_ratio.detach(), mask, denom),
        }
    return loss, metrics, {"psft/ratio": ratio_d, "psft/clipped_high": high & mask}


def check_clip(clip_low: float, clip_high: float) -> None:
    if not 0.0 <= clip_low < 1.0:
        raise ConfigError(f"clip_low must be in [0, 1), got {clip_low}")
    if not clip_high >= 0.0:
        raise ConfigError(f"clip_high must be >= 0, got {clip_high}")


@register_objective("psft")
class PSFT(Objective):
    """Clipped surrogate against the OldPolicy callback's snapshot (refreshed every N steps)."""

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.28) -> None:
        check_clip(clip_low, clip_high)
        self.clip_low = clip_low
        self.clip_high = clip_high

    def needs(self) -> Needs:
        return Needs(old_policy_from=0)

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {
            "clip fractions (high/low)": ["psft/clip_frac_high", "psft/clip_frac_low"],
            "ratio mean/max": ["psft/ratio_mean", "psft/ratio_max"],
            "approx-KL and ref-KL": ["psft/approx_kl"],
        }

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.old_logprobs is None:
            raise ValueError(
                "PSFT needs old-policy log-probs but none were given: train through PSFTModule, whose "
                "OldPolicy callback provides them (or pass old_logprobs yourself)."
            )
        loss, metrics, tokens = psft_terms(
            inputs.logprobs,
            inputs.old_logprobs,
            inputs.mask,
            self.clip_low,
            self.clip_high,
            inputs.num_tokens,
        )
        _, nll = nll_loss(inputs.logprobs.detach(), inputs.mask, inputs.num_tokens)
        return ObjectiveOutput(loss, {**metrics, **nll}, tokens)
