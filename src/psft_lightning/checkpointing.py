"""Checkpoints a run can trust: atomic writes, RNG state, a clean stop on SIGTERM, and a refusal to
resume a checkpoint of another objective or model.

Lightning restores the model, optimizer, scheduler, loops and callback state; the data position
follows from the optimizer step (``StepBatches``). What it leaves out is added here: the torch,
Python and NumPy random generators, and a checkpoint on SIGTERM at an optimizer-step boundary.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from psft_lightning.boundary import first_line
from psft_lightning.errors import EXIT_PREEMPTED, ConfigError

log = logging.getLogger(__name__)

RNG_KEY = "psft_rng_states"
# hyper-parameters that must agree between a checkpoint and the run that resumes it
IDENTITY_HPARAMS = ("objective_name", "model", "tiny_config", "lora")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same directory, fsync it, then ``os.replace``
    it over the target: a crash (even SIGKILL) mid-write leaves the previous checkpoint intact.
    Remote paths (``s3://`` ...) go through Lightning's own transactional write."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                self.write(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except RuntimeError as err:  # torch's writer reports a failed write (disk full) as its own error
            cause = err.__cause__ or err.__context__
            if not isinstance(cause, OSError) or cause.errno is None:
                raise
            raise OSError(cause.errno, cause.strerror, str(target)) from err
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's load, with a file torch cannot read (truncated, not a checkpoint, or holding
        objects ``weights_only`` refuses) named in one line; ``weights_only false`` is said aloud."""
        if weights_only is False:
            log.warning(
                "weights_only is false: loading %s may run any code it holds; use it only for "
                "checkpoints you trust",
                path,
            )
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise  # the path itself is wrong: the CLI words those
        except Exception as err:  # unpickling bytes that are not a checkpoint fails with any error
            if not _is_local_file_protocol(path):
                raise
            raise ConfigError(
                f"Cannot read the checkpoint {path}: it is truncated, corrupted, not a PyTorch checkpoint, "
                f"or holds objects that weights_only loading refuses ({first_line(err)})"
            ) from err

    def write(self, checkpoint: dict[str, Any], f) -> None:
        """Serialise ``checkpoint`` into the open temporary file."""
        torch.save(checkpoint, f)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_path(new: Path, target: Path) -> None:
    """Move ``new`` (file or folder) to ``target``. An existing ``target`` is set aside and removed only
    once ``new`` is in place: were the process killed between the two renames, it is still whole as
    ``.<name>.old-<pid>``. An empty ``target`` folder is replaced in one rename."""
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    remove_path(old)


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Swap Lightning's default CheckpointIO for AtomicCheckpointIO (a user's own plugin is kept)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


# -------------------------------------------------------------------------------------------- RNG
def rng_states() -> dict[str, Any]:
    """The global torch, CUDA, Python and NumPy generator states, in types ``weights_only`` loads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# ------------------------------------------------------------------------------ identity checks
def check_resumable(saved: dict[str, Any], current: dict[str, Any], ckpt_path: str | None) -> None:
    """Refuse to resume a checkpoint whose objective, model or LoRA setup differs from this run's."""
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r}, this run {current.get(key)!r}"
        for key in IDENTITY_HPARAMS
        if key in saved and saved.get(key) != current.get(key)
    ]
    if diffs:
        raise ConfigError(
            f"The checkpoint {ckpt_path or ''} belongs to another run than this one ("
            + "; ".join(diffs)
            + "). Resume or validate it with the settings it was trained with, or start a new run from "
            "its weights: "
            "`psft export <checkpoint> <dir>` and then `model.model: <dir>`."
        )


# ------------------------------------------------------------------------------------- last.ckpt
_LAST_SAVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # trainer -> step of its last save


def last_path(trainer: L.Trainer) -> str:
    """Where ModelCheckpoint keeps ``last.ckpt`` (``<default_root_dir>/checkpoints`` without one)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
    return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")


def save_last(trainer: L.Trainer) -> str:
    """Save ``last.ckpt`` at the current optimizer step, once whoever asks (periodic save, signal)."""
    path = last_path(trainer)
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and os.path.dirname(path) == callback.dirpath:
        # its own save_last overwrites this file (no last-v1.ckpt), also in a run resumed from it
        callback.last_model_path = path
    if _LAST_SAVED.get(trainer) != trainer.global_step:
        trainer.save_checkpoint(path, weights_only=False)  # resumable: optimizer, loops, callbacks
        _LAST_SAVED[trainer] = trainer.global_step
    return path


# ------------------------------------------------------------------------------- SIGTERM, SIGINT
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
