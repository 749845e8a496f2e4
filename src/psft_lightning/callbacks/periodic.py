"""Save ``last.ckpt`` during training, so a kill (SIGKILL, out of memory, power) costs a bounded part
of the run rather than all of it.

Lightning's ``ModelCheckpoint(every_n_train_steps=N)`` cannot also save by time, and once it has saved
periodically it skips ``save_last`` at the end of a run whose length is not a multiple of N. This
callback saves ``last.ckpt`` (where ModelCheckpoint keeps it) every ``every_n_steps`` optimizer steps
and/or every ``every_n_minutes``, whichever comes first; ModelCheckpoint still writes the final one.
"""

from __future__ import annotations

import time

import lightning as L

from psft_lightning.checkpointing import save_last
from psft_lightning.errors import ConfigError

DEFAULT_MINUTES = 30.0  # a run with no periodic setting of its own (``callbacks.defaults``)


class PeriodicCheckpoint(L.Callback):
    """Overwrite ``last.ckpt`` every ``every_n_steps`` optimizer steps and every ``every_n_minutes``.

    Args:
        every_n_steps: optimizer steps between saves (None: not by steps).
        every_n_minutes: wall-clock minutes between saves, checked at each step's end (None: not by time).
    """

    def __init__(
        self, every_n_steps: int | None = None, every_n_minutes: float | None = DEFAULT_MINUTES
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"PeriodicCheckpoint every_n_steps must be >= 1 (or null), got {every_n_steps}")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ConfigError(
                f"PeriodicCheckpoint every_n_minutes must be > 0 (or null), got {every_n_minutes}"
            )
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0 or trainer.checkpoint_callback is None:
            return  # inside gradient accumulation, or checkpointing is off
        step = trainer.global_step
        if 0 < trainer.max_steps <= step:
            return  # the run ends now: ModelCheckpoint writes the final last.ckpt
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        by_time = (
            self.every_n_minutes is not None
            and time.monotonic() - self._last_save >= 60 * self.every_n_minutes
        )
        if trainer.strategy.broadcast(by_steps or by_time):  # rank 0's clock decides for all
            save_last(trainer)
            self._last_save = time.monotonic()
