"""Dynamic Fine-Tuning, DFT (arXiv 2508.05629): each token's NLL weighted by its own stop-gradient
probability, l_t = -sg(p_t) * log p_t. The semantics of TRL's ``SFTTrainer(loss_type="dft")``
(``trl/trainer/sft_trainer.py``): token-sum divided by the step's loss-token count."""

from __future__ import annotations

from torch import Tensor

from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.token_mean import masked_contribution, nll_loss, normaliser


def dft_loss(
    logprobs: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """DFT loss, with ``train/nll`` and ``dft/weight_mean`` (token-mean of sg(p_t)) as metrics."""
    denom = normaliser(mask, num_tokens)
    weight = logprobs.detach().float().exp()
    loss = masked_contribution(-weight * logprobs.float(), mask, denom)
    _, nll = nll_loss(logprobs.detach(), mask, num_tokens)
    return loss, {**nll, "dft/weight_mean": masked_contribution(weight, mask, denom)}


@register_objective("dft")
class DFT(Objective):
    """-sg(p_t) log p_t: SFT's gradient rescaled by the token's probability; its loss is far below CE's."""

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        return ObjectiveOutput(*dft_loss(inputs.logprobs, inputs.mask, inputs.num_tokens))

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"DFT": ["dft/weight_mean", "train/nll"]}
