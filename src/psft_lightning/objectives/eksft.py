"""EKSFT, Entropy-KL Selective Fine-Tuning (arXiv 2605.29303; code: MINE-USTC/EKSFT
``src/llamafactory/train/eksft/trainer.py``, ``EKSFTSeq2SeqTrainer.compute_loss``).

Per micro-batch of n loss tokens, k = int(n * top_k_ratio): E = the k tokens of highest policy entropy,
K = the k tokens of highest KL(pi || pi_ref) (both detached, for the selection only); the tokens in
E | K (``combine: union``) or E & K (``intersection``) are removed from the cross-entropy, which is the mean
over the remaining tokens. Then

    loss = CE_kept - entropy_weight * mean_E H(pi)/log V + kl_weight * mean_K KL(pi || pi_ref)

where the entropy and KL terms carry gradient. Each mean is of the micro-batch (the official code's unit,
one forward), weighted by the micro-batch's share of the optimizer step's tokens, so several
micro-batches add up as a token-weighted mean of their means.

Departures from the official code, and why:
- its KL term computes ``sum p * (p - log pi_ref)`` (``probs`` where ``log_probs`` is meant); this is the
  KL(pi || pi_ref) the paper writes and the code itself selects by;
- its per-step +-5% change of the two weights towards ``eksft_target_entropy``/``eksft_target_kl`` is
  left out: the weights are re-read every step, so it never accumulates and only flips by 10%;
- ``eksft_largest_kl``/``eksft_largest_entropy`` (select the lowest instead) are left out: the paper
  and the shipped script use the highest.
Defaults are the repository's README and example script (ratio 0.2, both weights 0.05, union); its
argument dataclass says weights 1.0/0.5 and intersection.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from psft_lightning.errors import ConfigError
from psft_lightning.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from psft_lightning.objectives.needs import Needs
from psft_lightning.objectives.token_mean import nll_loss, normaliser

MaskMode = Literal["union", "intersection"]


def normalised_entropy(logits: Tensor, ref_logits: Tensor | None, targets: Tensor) -> Tensor:
    """H(pi) / log V per token, differentiable (the official entropy term's scale)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


def top_k(values: Tensor, mask: Tensor, k: int) -> Tensor:
    """A boolean mask of the ``k`` highest ``values`` among the ``mask``ed tokens."""
    chosen = torch.zeros_like(mask)
    if k > 0:
        ranked = values.detach().float().masked_fill(~mask, float("-inf"))
        chosen[ranked.topk(k).indices] = True
    return chosen


def eksft_selection(
    entropy: Tensor, kl: Tensor, mask: Tensor, top_k_ratio: float, combine: MaskMode
) -> tuple[Tensor, Tensor, Tensor]:
    """(removed, E, K): the tokens taken out of the cross-entropy, the top-k by entropy, by KL."""
    mask = mask.bool()
    k = int(int(mask.sum()) * top_k_ratio)
    by_entropy, by_kl = top_k(entropy, mask, k), top_k(kl, mask, k)
    removed = by_entropy | by_kl if combine == "union" else by_entropy & by_kl
    return removed, by_entropy, by_kl


def _mean_over(values: Tensor, chosen: Tensor) -> Tensor:
    return (values.float() * chosen.float()).sum() / chosen.sum().clamp(min=1)


def eksft_loss(
    logprobs: Tensor,
    entropy: Tensor,
    kl: Tensor,
    mask: Tensor,
    top_k_ratio: float = 0.2,
    combine: MaskMode = "union",
    entropy_weight: float = 0.05,
    kl_weight: float = 0.05,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """EKSFT from per-token log-probs, (normalised) entropy and KL(pi || pi_ref), with ``train/nll``,
    ``eksft/removed_frac`` (share of the step's tokens out of the CE), ``eksft/entropy`` and ``eksft/kl``
    (the two terms before their weights)."""
    denom = normaliser(mask, num_tokens)
    removed, by_entropy, by_kl = eksft_selection(entropy, kl, mask, top_k_ratio, combine)
    share = mask.bool().sum() / denom
    ce = share * _mean_over(-logprobs, mask.bool() & ~removed)
    entropy_term = share * _mean_over(entropy, by_entropy)
    kl_term = share * _mean_over(kl, by_kl)
    loss = ce - entropy_weight * entropy_term + kl_weight * kl_term
    _, nll = nll_loss(logprobs.detach(), mask, num_tokens)
    metrics = {
        **nll,
        "eksft/removed_frac": removed.sum() / denom,
        "eksft/entropy": entropy_term.detach(),
        "eksft/kl": kl_term.detach(),
    }
    return loss, metrics


@register_objective("eksft")
class EKSFT(Objective):
    """CE without the top-k tokens by entropy and by KL to pi_ref, plus entropy and KL terms on them."""

    def __init__(
        self,
        top_k_ratio: float = 0.2,
        combine: MaskMode = "union",
        entropy_weight: float = 0.05,
        kl_weight: float = 0.05,
    ) -> None:
        if not 0 <= top_k_ratio < 1:
            raise ConfigError(
                f"eksft top_k_ratio must be in [0, 1) (the share of a micro-batch's tokens selected by "
                f"entropy and by KL), got {top_k_ratio}"
            )
        if combine not in ("union", "intersection"):
            raise ConfigError(f"eksft combine must be union or intersection, got {combine!r}")
        if entropy_weight < 0:
            raise ConfigError(f"eksft entropy_weight must be >= 0, got {entropy_weight}")
        if kl_weight < 0:
            raise ConfigError(f"eksft kl_weight must be >= 0, got {kl_weight}")
        self.top_k_ratio = top_k_ratio
        self.combine = combine
        self.entropy_weight = entropy_weight
        self.kl_weight = kl_weight

    def needs(self) -> Needs:
        return Needs(ref_kl="reverse", vocab_fn=normalised_entropy)

    def __call__(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.vocab is None or inputs.ref_kl is None:
            raise ValueError("The eksft objective needs inputs.vocab (its entropy) and inputs.ref_kl.")
        # a term whose weight is 0 is detached, so its chunked backward never runs
        entropy = inputs.vocab if self.entropy_weight > 0 else inputs.vocab.detach()
        kl = inputs.ref_kl if self.kl_weight > 0 else inputs.ref_kl.detach()
        loss = eksft_loss(
            inputs.logprobs,
            entropy,
            kl,
            inputs.mask,
            self.top_k_ratio,
            self.combine,
            self.entropy_weight,
            self.kl_weight,
            inputs.num_tokens,
        )
        return ObjectiveOutput(*loss)

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"EKSFT": ["eksft/removed_frac", "eksft/entropy", "eksft/kl", "train/nll"]}
