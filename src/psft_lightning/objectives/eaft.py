"""Entropy-Adaptive Fine-Tuning, EAFT (arXiv 2601.02151; code: PRIS-CV/EAFT, merged into LLaMA-Factory as
``use_eaft_loss``, ``_eaft_cross_entropy`` in ``src/llamafactory/train/trainer_utils.py``):
l_t = -sg(w_t) log p_t, w_t = (H_t / 3)^alpha, H_t the entropy of the policy renormalised over its
top-20 logits and 3 the official constant (about ln 20). Confident tokens (low entropy) that conflict
with the data learn less. The weight needs the full logits: it runs through ``Needs(vocab_fn=...)``."""

from __future__ import annotations

from functools import partial

from torch import Tensor

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import masked_contribution, nll_loss, normaliser

TOP_K = 20
ENTROPY_SCALE = 3.0


def eaft_weight(logits: Tensor, ref_logits: Tensor | None, targets: Tensor, alpha: float = 1.0) -> Tensor:
    """(top-20 entropy / 3) ** alpha per token, detached."""
    top = logits.detach().topk(min(TOP_K, logits.shape[-1]), dim=-1).values.log_softmax(-1)
    return (-(top.exp() * top).sum(-1) / ENTROPY_SCALE).pow(alpha)


def eaft_loss(
    logprobs: Tensor, weights: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean of -sg(weights) * log p, with ``train/nll`` and ``eaft/weight_mean``."""
    denom = normaliser(mask, num_tokens)
    weights = weights.detach().float()
    _, nll = nll_loss(logprobs.detach(), mask, num_tokens)
    loss = masked_contribution(-weights * logprobs.float(), mask, denom)
    return loss, {**nll, "eaft/weight_mean": masked_contribution(weights, mask, denom)}


@register_objective("eaft")
class EAFT(Objective):
    """NLL weighted by the policy's normalised top-20 entropy (stop-gradient), to the power ``alpha``."""

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha >= 0:
            raise ConfigError(
                f"eaft alpha must be >= 0, got {alpha}: a negative power weights confident tokens most "
                "(0 is plain ce)"
            )
        self.alpha = alpha

    def needs(self) -> Needs:
        return Needs(vocab_fn=partial(eaft_weight, alpha=self.alpha))

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.vocab is None:
            raise ValueError("The eaft objective needs inputs.vocab (its per-token weights from ops).")
        return ObjectiveOutput(*eaft_loss(inputs.logprobs, inputs.vocab, inputs.mask, inputs.num_tokens))

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"EAFT": ["eaft/weight_mean", "train/nll"]}
