"""A callback that SIGTERMs its own process, as a scheduler would, for the preemption tests."""

from __future__ import annotations

import os
import signal

import lightning as L


class SigtermAt(L.Callback):
    """Send SIGTERM during optimizer step ``step`` (before its optimizer update), or during the sanity
    validation when ``step`` is -1."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.step == -1 and trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
