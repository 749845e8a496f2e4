"""Plain SFT: cross-entropy on response tokens (policy gradient with advantage fixed to 1)."""

from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.token_mean import nll_loss


@register_objective("ce")
class CE(Objective):
    """loss = -token-mean of log pi_theta(y_t | s_t) over the optimizer step's response tokens."""

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        loss, metrics = nll_loss(inputs.logprobs, inputs.mask, inputs.num_tokens)
        return ObjectiveOutput(loss, metrics)
