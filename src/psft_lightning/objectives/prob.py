"""Probability-based SFT (arXiv 2510.00526, "Beyond Log Likelihood"; code: GaotangLi/Beyond-Log-Likelihood):
l_t = (1 - p_t^alpha) / alpha, whose gradient is NLL's scaled by p_t^alpha. alpha -> 0 recovers NLL;
alpha = 1 is the paper's prior-leaning -p objective (up to a constant), for models with strong priors."""

from __future__ import annotations

from torch import Tensor

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.token_mean import masked_contribution, nll_loss, normaliser


def prob_loss(
    logprobs: Tensor, mask: Tensor, alpha: float = 1.0, num_tokens: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean of (1 - p^alpha) / alpha, with ``train/nll`` and ``prob/weight_mean`` (mean p^alpha)."""
    denom = normaliser(mask, num_tokens)
    p_alpha = (alpha * logprobs.float()).exp()
    loss = masked_contribution((1.0 - p_alpha) / alpha, mask, denom)
    _, nll = nll_loss(logprobs.detach(), mask, num_tokens)
    return loss, {**nll, "prob/weight_mean": masked_contribution(p_alpha.detach(), mask, denom)}


@register_objective("prob")
class Prob(Objective):
    """(1 - p^alpha) / alpha: NLL's gradient weighted by p^alpha (alpha 1: the -p objective)."""

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha <= 0:
            raise ConfigError(f"prob alpha must be > 0 (alpha -> 0 is plain ce), got {alpha}")
        self.alpha = alpha

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        return ObjectiveOutput(*prob_loss(inputs.logprobs, inputs.mask, self.alpha, inputs.num_tokens))

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"Probability-based SFT": ["prob/weight_mean", "train/nll"]}
