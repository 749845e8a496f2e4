"""The callbacks a run gets without asking (``PSFTModule.configure_callbacks``)."""

from __future__ import annotations

import lightning as L

from psft_lightning.callbacks.divergence import StopOnNonFinite
from psft_lightning.callbacks.old_policy import OldPolicy
from psft_lightning.callbacks.periodic import PeriodicCheckpoint
from psft_lightning.metrics import step_progress_bar


def default_callbacks(trainer: L.Trainer, needs_old_policy: bool) -> list[L.Callback]:
    """An OldPolicy callback with defaults when the objective needs one and none is configured, the
    stop on a non-finite loss or gradient norm (StopOnNonFinite) and a periodic last.ckpt
    (PeriodicCheckpoint, every 30 minutes) unless configured, and Lightning's default progress bar
    swapped for one with short metric names."""
    callbacks: list[L.Callback] = []
    if needs_old_policy and not any(isinstance(c, OldPolicy) for c in trainer.callbacks):
        callbacks.append(OldPolicy())
    if not any(isinstance(c, StopOnNonFinite) for c in trainer.callbacks):
        callbacks.append(StopOnNonFinite())
    if not any(isinstance(c, PeriodicCheckpoint) for c in trainer.callbacks):
        callbacks.append(PeriodicCheckpoint())
    bar = step_progress_bar(trainer.progress_bar_callback)
    return callbacks + ([bar] if bar is not None else [])
