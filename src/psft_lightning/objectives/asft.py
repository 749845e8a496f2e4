"""Anchored SFT, ASFT (arXiv 2509.23753): DFT plus lambda * KL(pi_base || pi_theta) per token over the
full vocabulary, pi_base the frozen initial model. The KL is the forward one, F.kl_div(log pi_theta,
pi_base) in the official code (zhuchichi56/ASFT ``train.py``, mode ``asft``), whose default
``kl_weight`` 0.1 is lambda's default here; ``kl``'s default direction is the other one."""

from __future__ import annotations

from torch import Tensor

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.dft import dft_loss
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import masked_contribution, normaliser


def asft_loss(
    logprobs: Tensor,
    forward_kl: Tensor,
    mask: Tensor,
    kl_weight: float = 0.1,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DFT loss + ``kl_weight`` * token-mean of ``forward_kl`` (per-token KL(pi_base || pi_theta))."""
    dft, metrics = dft_loss(logprobs, mask, num_tokens)
    kl = masked_contribution(forward_kl, mask, normaliser(mask, num_tokens))
    return dft + kl_weight * kl, {**metrics, "asft/kl": kl.detach()}


@register_objective("asft")
class ASFT(Objective):
    """DFT anchored to the initial model by lambda * KL(pi_base || pi_theta) (``kl_weight``, 0.1)."""

    def __init__(self, kl_weight: float = 0.1) -> None:
        if not kl_weight >= 0:
            raise ConfigError(f"asft kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = kl_weight

    def needs(self) -> Needs:
        return Needs(ref_kl="forward")

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.ref_kl is None:
            raise ValueError("The asft objective needs ref_kl (per-token KL(pi_base || pi_theta)).")
        return ObjectiveOutput(
            *asft_loss(inputs.logprobs, inputs.ref_kl, inputs.mask, self.kl_weight, inputs.num_tokens)
        )

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"ASFT": ["asft/kl", "dft/weight_mean", "train/nll"]}
