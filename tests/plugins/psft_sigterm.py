"""Callbacks that signal or kill their own process, as a scheduler, a user or the OOM killer would, for
the preemption, interrupt and crash tests."""

from __future__ import annotations

import os
import signal
import time

import lightning as L


class SigtermAt(L.Callback):
    """Send ``signal_name`` (SIGTERM by default) ``times`` times during optimizer step ``step`` (before its
    optimizer update), during the validation after step ``step`` with ``in_validation``, or during the
    sanity validation when ``step`` is -1; then sleep ``sleep_s`` seconds (a step that does not end)."""

    def __init__(
        self,
        step: int = 2,
        signal_name: str = "SIGTERM",
        times: int = 1,
        sleep_s: float = 0,
        in_validation: bool = False,
    ) -> None:
        self.step = step
        self.in_validation = in_validation
        self.signum = getattr(signal, signal_name)
        self.times = times
        self.sleep_s = sleep_s

    def _send(self) -> None:
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)
            time.sleep(0.1)  # the handler runs before the next signal
        time.sleep(self.sleep_s)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.step == -1 and trainer.sanity_checking:
            self._send()
        elif self.in_validation and trainer.global_step == self.step and batch_idx == 0:
            self._send()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step and not self.in_validation:
            self._send()


class KillAt(L.Callback):
    """SIGKILL the process as optimizer step ``step`` starts: no handler, no cleanup, no save."""

    def __init__(self, step: int = 5) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
