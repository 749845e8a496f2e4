"""What an evaluation scores, as plain values: never the LightningModule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from psft_lightning.data.batch import Batch
from psft_lightning.ops import TokenStats

ScoreFn = Callable[[nn.Module, Batch], TokenStats]  # per-token statistics of a batch at its loss positions


@dataclass
class Subject:
    """The policy under evaluation, the scoring function training uses (``step.token_stats`` with the
    run's chunks, so the probes measure what ``train/entropy`` measures), its tokenizer, and the base
    model: its name (for the bundled drift references) and how to load it when none are bundled."""

    policy: nn.Module
    score: ScoreFn
    tokenizer: Any
    model_name: str
    load_base: Callable[[], nn.Module]
