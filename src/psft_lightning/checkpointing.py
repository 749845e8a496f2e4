"""Checkpoints a run can trust: atomic writes, RNG state, one ``last.ckpt`` whoever saves it, and a
refusal to resume a checkpoint of another objective or model (the stop on a signal is ``stopping``).

Lightning restores the model, optimizer, scheduler, loops and callback state; the data position
follows from the optimizer step (``StepBatches``). What it leaves out is added here: the torch,
Python and NumPy random generators.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
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

from psft_lightning.boundary import unreadable_checkpoint
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
            raise ConfigError(unreadable_checkpoint(err, path)) from err

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
