"""DEFT, a Tsallis-style loss whose exponent is gated by the policy's own concentration (arXiv 2602.11424;
code: luludus/DEFT ``main_verl/trainer/fsdp_sft_trainer.py``, ``objective_trans`` "DEFT"):
l_t = -(p_t^a_t - 1) / a_t, a_t = sg(sum_v pi(v | s_t)^2). Its gradient is NLL's scaled by p_t^a_t:
a confident (concentrated) policy learns like ``prob``'s -p, a flat one like CE.

The gate is a whole-vocabulary quantity: it runs through ``Needs(vocab_fn=...)``, chunk by chunk, never
with full logits. The official code divides by ``a_t + 1e-6``; this follows the paper's ``a_t``: the gate
is at least 1/V > 0, so no epsilon is needed, and the code's changes the gradient by a factor
a_t / (a_t + 1e-6), 0.87 for a uniform policy over 152k tokens and 1 to 1e-4 once a_t >= 0.01.
"""

from __future__ import annotations

import torch
from torch import Tensor

from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import masked_contribution, nll_loss, normaliser


def deft_gate(logits: Tensor, ref_logits: Tensor | None, targets: Tensor) -> Tensor:
    """sum_v p_v^2 per token (the collision probability of the policy), detached."""
    p = logits.detach().softmax(-1)
    return torch.einsum("cv,cv->c", p, p)  # a row-wise dot: no second [c, V] temporary


def deft_loss(
    logprobs: Tensor, gate: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean of -(p^a - 1) / a with a = sg(``gate``), with ``train/nll`` and ``deft/gate_mean``."""
    denom = normaliser(mask, num_tokens)
    a = gate.detach().float()
    loss = masked_contribution(-((a * logprobs.float()).exp() - 1.0) / a, mask, denom)
    _, nll = nll_loss(logprobs.detach(), mask, num_tokens)
    return loss, {**nll, "deft/gate_mean": masked_contribution(a, mask, denom)}


@register_objective("deft")
class DEFT(Objective):
    """-(p^a - 1)/a, a = sg(sum_v p_v^2): NLL's gradient scaled by p^a, a the policy's concentration."""

    def needs(self) -> Needs:
        return Needs(vocab_fn=deft_gate)

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.vocab is None:
            raise ValueError("The deft objective needs inputs.vocab (its per-token gate from ops).")
        return ObjectiveOutput(*deft_loss(inputs.logprobs, inputs.vocab, inputs.mask, inputs.num_tokens))

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"DEFT": ["deft/gate_mean", "train/nll"]}
