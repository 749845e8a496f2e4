"""``--ckpt_path last``: find the newest ``last.ckpt`` of this run and keep logging in its version folder.

Lightning resolves ``last`` inside the checkpoint folder of the *new* logger version, which is empty,
so a resumed run silently started from scratch. Here ``last`` is resolved before anything is built:
among the run's checkpoint folders (an explicit ``ModelCheckpoint.dirpath``, the logger's
``<save_dir>/<name>/version_*/checkpoints``, or ``<default_root_dir>/checkpoints`` without a logger) the
most recently written ``last*.ckpt`` wins, the logger is pointed at its version folder, and no
checkpoint at all is an error rather than a fresh start.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from jsonargparse import Namespace

from psft_lightning.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"
VERSION_DIR = re.compile(r"version_(\d+)$")


def resolve_checkpoint(cfg: Namespace, fitting: bool) -> None:
    """Replace ``cfg.ckpt_path == "last"`` with the newest last checkpoint of this run, in place; when
    the checkpoint lies in a version folder of this run's logger and the run trains on, log there."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return
    trainer = cfg.trainer
    root_dir = Path(trainer.get("default_root_dir") or os.getcwd())
    logger = _logger_spec(trainer.get("logger"), root_dir)
    if ckpt_path == "last":
        ckpt_path = cfg.ckpt_path = str(_newest_last(trainer, logger, root_dir))
    where = ""
    path = Path(ckpt_path)
    version = VERSION_DIR.match(path.parent.parent.name)
    run_root = Path(logger.init_args.save_dir, logger.init_args.name) if logger is not None else None
    if fitting and version and run_root is not None and path.parent.parent.parent == run_root:
        logger.init_args.version = int(version.group(1))
        trainer.logger = logger
        where = f"; logging continues in {path.parent.parent}"
    step = checkpoint_step(path)
    max_steps = trainer.get("max_steps")
    comparable = fitting and isinstance(step, int) and isinstance(max_steps, int)
    if comparable and step == max_steps:
        log.info("%s is at trainer.max_steps (%d): nothing is left to train", path, step)
    if comparable and 0 <= max_steps < step:
        raise ConfigError(
            f"--ckpt_path {path} is at step {step} and trainer.max_steps is {max_steps}: nothing is left "
            f"to train. Give trainer.max_steps above {step} to train on (the lr schedule then follows the "
            "new horizon), or use psft validate to evaluate the checkpoint."
        )
    log.info("resuming from %s (step %s)%s", path, step, where)


def _newest_last(trainer: Namespace, logger: Namespace | None, root_dir: Path) -> Path:
    """The most recently written ``last*.ckpt`` in this run's checkpoint folders."""
    folders = _checkpoint_dirpaths(trainer.get("callbacks"))
    if logger is not None:
        folders.append(Path(logger.init_args.save_dir) / logger.init_args.name / "version_*" / "checkpoints")
    elif trainer.get("logger") is False:
        folders.append(root_dir / "checkpoints")
    found = [path for folder in folders for path in _glob(folder / "last*.ckpt")]
    if not found:
        looked = ", ".join(str(folder / "last*.ckpt") for folder in folders)
        raise ConfigError(
            f"--ckpt_path last: this run has no checkpoint to resume (looked for {looked}). Train without "
            "--ckpt_path first (with a ModelCheckpoint that has save_last: true), or give a checkpoint path."
        )
    return max(found, key=lambda path: (path.stat().st_mtime, str(path)))


def _logger_spec(logger, root_dir: Path) -> Namespace | None:
    """The run's first logger as ``class_path``/``init_args`` with a save_dir and name, if it has them.

    ``None`` or ``True`` is Lightning's default logger, written out so its version can be set."""
    if logger is None or logger is True:
        return Namespace(
            class_path=DEFAULT_LOGGER,
            init_args=Namespace(save_dir=str(root_dir), name="lightning_logs", version=None),
        )
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if not isinstance(logger, Namespace) or "init_args" not in logger:
        return None
    args = logger.init_args
    if args.get("save_dir") is None or "version" not in args:
        return None
    if args.get("name") is None:
        args.name = ""
    return logger


def _checkpoint_dirpaths(callbacks) -> list[Path]:
    """Explicit ``dirpath``s of the configured ModelCheckpoint callbacks."""
    paths = []
    for callback in callbacks or []:
        if isinstance(callback, Namespace) and str(callback.get("class_path", "")).endswith(
            "ModelCheckpoint"
        ):
            dirpath = (callback.get("init_args") or Namespace()).get("dirpath")
            if dirpath:
                paths.append(Path(dirpath))
    return paths


def _glob(pattern: Path) -> list[Path]:
    anchor = Path(pattern.anchor) if pattern.is_absolute() else Path()
    return sorted(anchor.glob(str(pattern.relative_to(anchor))))


def checkpoint_step(path: Path) -> int | str:
    """The optimizer step a checkpoint file or sharded checkpoint folder was saved at."""
    file = path / "meta.pt" if path.is_dir() else path
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)["global_step"]
    except Exception:  # the step is only reported; a broken file fails when Lightning loads it
        return "unknown"
