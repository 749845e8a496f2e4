"""PSFT with a warm-up: plain cross-entropy for the first ``warmup_steps`` steps, then PSFT."""

from __future__ import annotations

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.psft import PSFT
from psft_lightning.objectives.token_mean import nll_loss


@register_objective("psft_warmup")
class PSFTWarmup(PSFT):
    """CE while ``step < warmup_steps``; then PSFT, with the first old-policy snapshot at the switch."""

    def __init__(self, warmup_steps: int = 10, clip_low: float = 0.2, clip_high: float = 0.28) -> None:
        super().__init__(clip_low, clip_high)
        if not warmup_steps >= 0:
            raise ConfigError(f"psft_warmup warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps

    def needs(self) -> Needs:
        return Needs(old_policy_from=self.warmup_steps)

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.step < self.warmup_steps:
            loss, metrics = nll_loss(inputs.logprobs, inputs.mask, inputs.num_tokens)
            return ObjectiveOutput(loss, metrics)
        return super().__call__(inputs)
