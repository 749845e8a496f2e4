"""A user's own objective, for the CLI tests: selected by ``class_path`` or by an entry-point name."""

from __future__ import annotations

from psft_lightning.objectives import Objective, ObjectiveInputs, ObjectiveOutput
from psft_lightning.objectives.base import masked_contribution, normaliser


class FocalNLL(Objective):
    """Focal-weighted NLL: each token's -log p is scaled by (1 - p) ** gamma (gamma 0 is plain CE)."""

    def __init__(self, gamma: float = 2.0) -> None:
        self.gamma = gamma

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        denom = normaliser(inputs.mask, inputs.num_tokens)
        weight = (1.0 - inputs.logprobs.detach().exp()).pow(self.gamma)
        loss = masked_contribution(-weight * inputs.logprobs, inputs.mask, denom)
        return ObjectiveOutput(loss, {"focal/weight": masked_contribution(weight, inputs.mask, denom)})


class StrictFocalNLL(FocalNLL):
    """The same objective with a required argument: it cannot be built from its name alone."""

    def __init__(self, gamma: float) -> None:
        super().__init__(gamma)
