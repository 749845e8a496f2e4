"""TrSFT, the demonstration-side trust region of TRAPO (arXiv 2512.17636; code: Su-my/TRAPO, the
``clip_low`` option of ``off_policy_reshape`` in ``luffy/verl/verl/trapo_src/mix_core_alg.py``):
l_t = -p_t / max(sg(p_t), c), c = 0.1 (the code's ``clamp(min=0.1)``).

A token the policy already finds likely (p_t >= c) gets CE's gradient (-grad log p_t); an unlikely one a
bounded gradient, -(p_t / c) grad log p_t, so demonstrations far from the policy cannot pull it hard:
the mirror image of PSFT's trust region, which bounds the policy's side. TRAPO applies it to the
demonstration tokens of a mixed RL batch with advantage 1; alone, it is this SFT objective, reduced by
the house's token-mean (the official script's ``loss_remove_token_mean`` divides by the padded response
length of its RL batch, which has no counterpart here).
"""

from __future__ import annotations

from torch import Tensor

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.token_mean import masked_contribution, nll_loss, normaliser


def trsft_loss(
    logprobs: Tensor, mask: Tensor, prob_floor: float = 0.1, num_tokens: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean of -p / max(sg(p), ``prob_floor``), with ``train/nll`` and ``trsft/bounded_frac`` (the
    share of tokens below the floor, whose gradient is bounded)."""
    denom = normaliser(mask, num_tokens)
    p = logprobs.float().exp()
    below = (p.detach() < prob_floor).float()
    loss = masked_contribution(-p / p.detach().clamp(min=prob_floor), mask, denom)
    _, nll = nll_loss(logprobs.detach(), mask, num_tokens)
    return loss, {**nll, "trsft/bounded_frac": masked_contribution(below, mask, denom)}


@register_objective("trsft")
class TrSFT(Objective):
    """-p / max(sg(p), c): CE's gradient on likely tokens, a bounded one below ``prob_floor`` (0.1)."""

    def __init__(self, prob_floor: float = 0.1) -> None:
        if not 0 < prob_floor <= 1:
            raise ConfigError(
                f"trsft prob_floor must be in (0, 1] (a probability: below it the gradient is bounded), "
                f"got {prob_floor}"
            )
        self.prob_floor = prob_floor

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        return ObjectiveOutput(*trsft_loss(inputs.logprobs, inputs.mask, self.prob_floor, inputs.num_tokens))

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"TrSFT": ["trsft/bounded_frac", "train/nll"]}
