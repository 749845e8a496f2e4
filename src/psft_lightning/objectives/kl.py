"""SFT-KL: cross-entropy plus beta * KL to the frozen initial model, in either direction."""

from __future__ import annotations

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import masked_contribution, normaliser
from psft_lightning.ops import KLDirection


@register_objective("kl")
class KL(Objective):
    """loss = NLL + beta * token-mean of the full-vocabulary KL to pi_ref.

    ``direction`` ``reverse`` (default) is KL(pi_theta || pi_ref), ``forward`` KL(pi_ref || pi_theta);
    the SFT-KL baselines in the literature use both. The reference is the policy's initial weights,
    frozen and never refreshed (unlike PSFT's old policy). The per-token KL is exact over the
    vocabulary, computed by ``ops`` in chunks.
    """

    def __init__(self, beta: float = 0.1, direction: KLDirection = "reverse") -> None:
        if not beta >= 0:
            raise ConfigError(f"kl beta must be >= 0, got {beta}")
        if direction not in ("reverse", "forward"):
            raise ConfigError(f"kl direction must be reverse or forward, got {direction!r}")
        self.beta = beta
        self.direction = direction

    def needs(self) -> Needs:
        return Needs(ref_kl=self.direction)

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
