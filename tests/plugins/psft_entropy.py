# my_entropy_objective.py: README's "A new objective with a new need is one file", as printed there.
from psft_lightning.objectives import Needs, Objective, ObjectiveInputs, ObjectiveOutput
from psft_lightning.objectives.base import masked_contribution, normaliser


class EntropyBonusSFT(Objective):
    """SFT minus a bonus for the policy's token entropy, to slow SFT's entropy collapse."""

    def __init__(self, bonus: float = 0.1) -> None:
        self.bonus = bonus

    def needs(self) -> Needs:
        return Needs(entropy=True)  # the step now computes inputs.entropy; nothing else changes

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        denom = normaliser(inputs.mask, inputs.num_tokens)
        nll = masked_contribution(-inputs.logprobs, inputs.mask, denom)
        entropy = masked_contribution(inputs.entropy, inputs.mask, denom)
        return ObjectiveOutput(
            nll - self.bonus * entropy, {"train/nll": nll.detach(), "bonus/entropy": entropy}
        )
