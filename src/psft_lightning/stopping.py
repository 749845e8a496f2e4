"""A clean stop on SIGTERM or Ctrl-C: finish the optimizer step, save ``last.ckpt`` once, exit 143 / 130;
within a bounded time, or at once on a second Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import lightning as L
import torch

from psft_lightning.checkpointing import save_last
from psft_lightning.errors import EXIT_PREEMPTED, ConfigError

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = EXIT_PREEMPTED  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
STOP_TIMEOUT_ENV = "PSFT_STOP_TIMEOUT"
STOP_TIMEOUT_S = 300.0  # how long a signalled run waits for its optimizer step to end
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


class Preempted(BaseException):
    """Training stopped on SIGTERM or SIGINT (after saving ``checkpoint``, if any): the CLI exits with
    143 (SIGTERM) or 130 (SIGINT), so a scheduler or a retry wrapper can tell a stop from completion.
    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it."""

    def __init__(self, step: int | None, checkpoint: str | None, signum: int = signal.SIGTERM) -> None:
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        name = SIGNAL_NAMES.get(signum, signum)
        if step is None:  # outside a fit: parsing, loading, validate
            super().__init__(f"stopped by {name}: nothing was saved")
            return
        saved = (
            f"saved {checkpoint}; resume with --ckpt_path last (or {checkpoint})"
            if checkpoint
            else "nothing was saved: training had not started"
        )
        super().__init__(f"stopped by {name} at step {step}: {saved}")


def stop_timeout() -> float:
    """Seconds a signalled run waits for the current optimizer step (``$PSFT_STOP_TIMEOUT``, else 300)."""
    value = os.environ.get(STOP_TIMEOUT_ENV)
    try:
        seconds = float(value) if value else STOP_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{STOP_TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{STOP_TIMEOUT_ENV} must be > 0 seconds, got {value!r}")
    return seconds


def stop_before_training(signum, frame) -> None:
    """SIGINT before a fit has its own handler, or in validate: nothing to save, stop at once (130)."""
    raise Preempted(None, None, signum)


def exit_now(message: str, code: int) -> None:
    """Leave at once, from any thread and whatever the main thread is doing: no save, no cleanup."""
    sys.stderr.write(f"psft: {message}\n")
    sys.stderr.flush()
    os._exit(code)


class CheckpointOnSignal(L.Callback):
    """On SIGTERM or a first SIGINT (Ctrl-C), finish the current optimizer step, save ``last.ckpt`` and
    stop at once.

    The stop is a :class:`Preempted` exception: no validation and no second checkpoint follow, and the
    ``psft`` command exits with status 143 (SIGTERM) or 130 (SIGINT). A signal during a validation
    between steps saves and stops after the current validation batch. A signal before training starts
    (data, model, sanity validation) stops without a checkpoint: SIGTERM at the sanity check or the
    start of training, SIGINT at once. A second SIGINT stops at once without saving. If the step does not
    end within ``stop_timeout()`` seconds of the signal (a hang, a step that never comes), the process
    exits with the same status without saving; the newest periodic ``last.ckpt`` is then the one to
    resume. Replaces Lightning's own SIGTERM handling during fit, which exits after the current
    micro-batch (possibly mid gradient accumulation) without saving. Under several processes the stop
    is agreed by all ranks.
    """

    def __init__(self, signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signums = tuple(signums)
        self.received: int | None = None  # the first signal received, if any
        self.saved_path: str | None = None
        self._originals: dict[int, Any] = {}  # the process's handlers from before this fit
        self._installed = False
        self._training = False
        self._step = 0
        self._watchdog: threading.Timer | None = None
        self._timeout = STOP_TIMEOUT_S

    def _handler(self, signum, frame) -> None:
        name = SIGNAL_NAMES.get(signum, signum)
        if signum == signal.SIGINT and self.received is not None:  # Ctrl-C again: the user will not wait
            message = f"stopped at once by a second {name} at step {self._step}: nothing was saved"
            exit_now(message, 128 + signum)
        if self.received is not None:
            return
        if signum == signal.SIGINT and not self._training:  # no step to finish: nothing is lost now
            raise Preempted(self._step, None, signum)
        self.received = signum
        timeout = self._timeout
        log.warning(
            "received %s: saving a checkpoint at the end of this optimizer step (within %g s, %s)",
            name,
            timeout,
            STOP_TIMEOUT_ENV,
        )
        self._watchdog = threading.Timer(timeout, self._step_never_ended, (signum, timeout))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _step_never_ended(self, signum: int, timeout: float) -> None:
        exit_now(
            f"stopped by {SIGNAL_NAMES.get(signum, signum)} at step {self._step}: the optimizer step did not "
            f"end within {timeout:g} s of the signal ({STOP_TIMEOUT_ENV}), so nothing was saved; the newest "
            "periodic last.ckpt, if any, is what --ckpt_path last resumes",
            128 + signum,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.received = None
        self.saved_path = None
        self._training = False
        self._step = trainer.global_step
        self._timeout = stop_timeout()  # a bad $PSFT_STOP_TIMEOUT fails now, not at the signal
        # before Lightning's signal connector captures (and, at teardown, restores) every handler
        self._originals = {signum: signal.getsignal(signum) for signum in self.signums}
        self._installed = False

    def _install(self) -> None:
        """Replace the handlers Lightning registers after ``on_fit_start`` (from the sanity check on;
        until then a SIGINT meets the CLI's ``stop_before_training``)."""
        for signum in self.signums:
            signal.signal(signum, self._handler)
        self._installed = True

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    # Every exit puts back the handlers from before the fit, never Lightning's (which holds the trainer:
    # re-installed, it kept every run of one process, the study, alive)
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()  # also a fit that installed but never trained (nothing left to train)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        self._cancel_watchdog()
        self._training = False
        if self._installed:
            for signum, original in self._originals.items():
                signal.signal(signum, signal.SIG_DFL if original is None else original)
            self._installed = False

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _agreed(self, trainer: L.Trainer) -> int | None:
        """The signal every rank stops for (the lowest received on any rank), or None."""
        received = torch.tensor(self.received if self.received is not None else 1 << 16)
        agreed = int(trainer.strategy.reduce(received.to(trainer.strategy.root_device), reduce_op="min"))
        return None if agreed == 1 << 16 else agreed

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, *args) -> None:
        signum = self._agreed(trainer)
        if signum is None:
            return
        if trainer.sanity_checking:
            raise Preempted(trainer.global_step, None, signum)
        # a validation between steps: the weights are those of a finished step; no need to wait for one
        self._cancel_watchdog()
        raise Preempted(trainer.global_step, save_last(trainer), signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()
        self._training = True
        if (signum := self._agreed(trainer)) is not None:
            raise Preempted(trainer.global_step, None, signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0 or self.saved_path is not None:
            return  # not an optimizer-step boundary, or saved already
        if self._agreed(trainer) is None:
            return
        self._cancel_watchdog()  # the step ended: the save that follows is not bounded
        self.saved_path = save_last(trainer)

    # The stop comes once the step's metrics are logged and before anything else runs: the next step,
    # a validation, or the epoch-end checkpoint. A run whose last step it was simply completes.
    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self._stop_if_saved(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stop_if_saved(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_saved(trainer)

    def _stop_if_saved(self, trainer: L.Trainer) -> None:
        if self.saved_path is not None:
            raise Preempted(trainer.global_step, self.saved_path, self.received or signal.SIGTERM)
