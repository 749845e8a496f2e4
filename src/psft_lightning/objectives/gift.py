"""GIFT, Gibbs Initialization with Finite Temperature (arXiv 2601.09233; code: zzy1127/GIFT
``verl/verl/trainer/fsdp_gift_trainer.py``): cross-entropy against the target distribution
softmax(log pi_ref + beta * onehot(y_t)), pi_ref the frozen initial model, beta 20 as in the official
code (its ``smooth_lambda`` defaults to 0 and is left out). A vocabulary-level objective: it runs
through ``Needs(vocab_fn=...)``, chunked, never with full logits."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import masked_contribution, nll_loss, normaliser


def gift_token_values(logits: Tensor, ref_logits: Tensor, targets: Tensor, beta: float = 20.0) -> Tensor:
    """Per token: [GIFT cross-entropy, the target distribution's (detached) mass on y_t]."""
    gain = torch.full_like(ref_logits[:, :1], beta)
    target = F.log_softmax(ref_logits, -1).scatter_add(1, targets[:, None], gain).softmax(-1)
    loss = -(target * F.log_softmax(logits, -1)).sum(-1)
    return torch.stack([loss, target.gather(1, targets[:, None]).squeeze(1)], -1)


def gift_loss(
    logits: Tensor,
    ref_logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    beta: float = 20.0,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GIFT over full ``[N, V]`` logits (for tests and small vocabularies), with its metrics."""
    values = gift_token_values(logits.float(), ref_logits.detach().float(), targets, beta)
    logprobs = F.log_softmax(logits.detach().float(), -1).gather(1, targets[:, None]).squeeze(1)
    return gift_from_values(values, logprobs, mask, num_tokens)


def gift_from_values(values: Tensor, logprobs: Tensor, mask: Tensor, num_tokens) -> tuple[Tensor, dict]:
    denom = normaliser(mask, num_tokens)
    _, nll = nll_loss(logprobs.detach(), mask, num_tokens)
    target_mass = masked_contribution(values[:, 1].detach(), mask, denom)
    return masked_contribution(values[:, 0], mask, denom), {**nll, "gift/target_mass": target_mass}


@register_objective("gift")
class GIFT(Objective):
    """Cross-entropy to softmax(log pi_ref + beta * onehot(y)): SFT that keeps pi_ref's other mass."""

    def __init__(self, beta: float = 20.0) -> None:
        if not beta > 0:
            raise ConfigError(
                f"gift beta must be > 0, got {beta}: it is the gain on the data token (0 ignores the data, "
                "a negative beta trains away from it)"
            )
        self.beta = beta

    def needs(self) -> Needs:
        return Needs(vocab_fn=partial(gift_token_values, beta=self.beta), vocab_ref=True)

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.vocab is None:
            raise ValueError("The gift objective needs inputs.vocab (its per-token values from ops).")
        return ObjectiveOutput(
            *gift_from_values(inputs.vocab, inputs.logprobs, inputs.mask, inputs.num_tokens)
        )

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"GIFT": ["gift/target_mass", "train/nll"]}
