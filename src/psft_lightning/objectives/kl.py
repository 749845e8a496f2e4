"""SFT-KL: cross-entropy plus beta * KL(pi_theta || pi_ref) to the frozen initial model."""

from __future__ import annotations

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import (
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    masked_contribution,
    normaliser,
    register_objective,
)


@register_objective("kl")
class KL(Objective):
    """loss = NLL + beta * token-mean of the full-vocabulary KL(pi_theta || pi_ref).

    The reference is the policy's initial weights, frozen and never refreshed (unlike PSFT's old
    policy). The per-token KL is exact over the vocabulary, computed by ``ops`` in chunks.
    """

    needs_reference = True

    def __init__(self, beta: float = 0.1) -> None:
        if beta < 0:
            raise ConfigError(f"kl beta must be >= 0, got {beta}")
        self.beta = beta

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"approx-KL and ref-KL": ["kl/ref_kl"]}

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.ref_kl is None:
            raise ValueError("The kl objective needs ref_kl (per-token KL to the reference model).")
        denom = normaliser(inputs.mask, inputs.num_tokens)
        nll = masked_contribution(-inputs.logprobs, inputs.mask, denom)
        ref_kl = masked_contribution(inputs.ref_kl, inputs.mask, denom)
        metrics = {"train/nll": nll.detach(), "kl/ref_kl": ref_kl.detach()}
        return ObjectiveOutput(nll + self.beta * ref_kl, metrics)
