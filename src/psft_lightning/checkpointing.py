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
from psft_lightning.errors import ConfigError

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


# -------------------------------------------------------------------------------------- SIGTERM
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class Preempted(Exception):
    """Training stopped on SIGTERM (after saving ``checkpoint``, if any): the CLI exits with 143, so a
    scheduler or a retry wrapper can tell preemption from completion."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        self.step = step
        self.checkpoint = checkpoint
        saved = (
            f"saved {checkpoint}; resume with --ckpt_path last (or {checkpoint})"
            if checkpoint
            else "nothing was saved: training had not started"
        )
        super().__init__(f"stopped by SIGTERM at step {step}: {saved}")


class CheckpointOnSignal(L.Callback):
    """On SIGTERM, finish the current optimizer step, save ``last.ckpt`` and stop at once.

    The stop is a :class:`Preempted` exception: no validation and no second checkpoint follow, and the
    ``psft`` command exits with status 143. A SIGTERM before training starts (during the sanity
    validation) stops the same way without a checkpoint. Replaces Lightning's own SIGTERM handling
    during fit, which exits after the current micro-batch (possibly mid gradient accumulation) without
    saving. Under several processes the stop is agreed by all ranks.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self.received = False
        self.saved_path: str | None = None
        self._original: Any = None  # the process's handler from before Lightning registered its own
        self._installed = False

    def _handler(self, signum, frame) -> None:
        log.warning("received signal %d: saving a checkpoint at the end of this optimizer step", signum)
        self.received = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = False
        self.saved_path = None
        self._original = signal.getsignal(self.signum)  # Lightning registers its handler after this hook

    def _install(self) -> None:
        """Replace the handler Lightning registers after ``on_fit_start`` (once per fit)."""
        if not self._installed:
            signal.signal(self.signum, self._handler)
            self._installed = True

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    # Every exit puts back the handler from before the fit, never Lightning's (which holds the trainer:
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
        if self._installed:
            signal.signal(self.signum, signal.SIG_DFL if self._original is None else self._original)
            self._installed = False

    def last_path(self, trainer: L.Trainer) -> str:
        """Where ModelCheckpoint keeps ``last.ckpt`` (``<default_root_dir>/checkpoints`` without one)."""
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
        return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")

    def _agreed(self, trainer: L.Trainer) -> bool:
        return trainer.strategy.reduce_boolean_decision(self.received, all=False)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, *args) -> None:
        if trainer.sanity_checking and self._agreed(trainer):
            raise Preempted(trainer.global_step, None)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()
        if self._agreed(trainer):
            raise Preempted(trainer.global_step, None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0 or self.saved_path is not None:
            return  # not an optimizer-step boundary, or saved already
        if not self._agreed(trainer):
            return
        path = self.last_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and os.path.dirname(path) == callback.dirpath:
            callback.last_model_path = path  # its own save_last overwrites this file, no last-v1.ckpt

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
            raise Preempted(trainer.global_step, self.saved_path)
