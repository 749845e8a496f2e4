"""Learning-rate schedules as multipliers of the base rate, per optimizer step."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["cosine", "linear", "constant"]


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float
) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine/linear decay to ``min_lr_ratio`` or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay
