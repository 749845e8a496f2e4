"""Teacher-forced probes: the policy's mean token entropy and mean NLL on fixed examples.

The per-token math is a scoring function (``evaluation.subject.ScoreFn``): training's own
``step.token_stats``, chunked over the vocabulary, so the probe measures exactly what ``train/entropy``
measures, on a fixed set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from psft_lightning.data.batch import Batch
from psft_lightning.data.collate import collate
from psft_lightning.data.formats import Example
from psft_lightning.evaluation.subject import ScoreFn
from psft_lightning.ops import TokenStats

PAD_ID = 0  # any id: padded positions have attention mask 0 and label -100


@dataclass
class ProbeResult:
    """Token-weighted means over every response token of the probe set."""

    entropy: float
    nll: float
    num_tokens: int


def batched_stats(
    score: ScoreFn, model: nn.Module, examples: list[Example], batch_size: int = 16
) -> Iterator[tuple[TokenStats, list[int]]]:
    """``score`` per micro-batch, with how many of the flat tokens belong to each example."""
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = Batch.of(
            {k: v.to(device) for k, v in collate(examples[start : start + batch_size], PAD_ID).items()}
        )
        yield score(model, batch), batch.loss_tokens_per_row()


@torch.no_grad()
def sequence_logprobs(
    score: ScoreFn, model: nn.Module, examples: list[Example], batch_size: int = 16
) -> list[Tensor]:
    """Per-token log-probs of each example's response tokens (one tensor per example)."""
    out: list[Tensor] = []
    for stats, counts in batched_stats(score, model, examples, batch_size):
        out.extend(stats.logprobs.double().split(counts))
    return out


@torch.no_grad()
def teacher_forced(
    score: ScoreFn, model: nn.Module, examples: list[Example], batch_size: int = 16
) -> ProbeResult:
    """Mean entropy and NLL of ``model`` over the response tokens of ``examples``."""
    if not examples:
        raise ValueError("a probe needs at least one example")
    entropy = nll = 0.0
    n = 0
    for stats, _ in batched_stats(score, model, examples, batch_size):
        entropy += stats.entropy.double().sum().item()
        nll -= stats.logprobs.double().sum().item()
        n += stats.logprobs.numel()
    return ProbeResult(entropy / n, nll / n, n)
