"""Train the tiny model for a few steps through the Python API (module + data module + Trainer), with
the checkpointing the CLI uses; shared by the export and LoRA tests."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from psft_lightning.callbacks import OldPolicy
from psft_lightning.checkpointing import AtomicCheckpointIO
from psft_lightning.data import Fields, PSFTDataModule
from psft_lightning.module import PSFTModule


def arithmetic_data(train: str, val: str, **kwargs) -> PSFTDataModule:
    """The tiny tokenizer over arithmetic-style question/answer files (``kwargs``: sizes, packing...)."""
    return PSFTDataModule(
        [train], [val], tokenizer="tiny", fields=Fields(prompt="question", completion="answer"), **kwargs
    )


def train_tiny(
    root: Path,
    files: tuple[str, str],
    steps: int = 3,
    refresh_every_n_steps: int = 2,
    precision: str = "32-true",
    **module_kwargs,
) -> tuple[PSFTModule, Path]:
    """Fit ``PSFTModule(model="tiny", **module_kwargs)`` for ``steps`` steps; returns it and last.ckpt."""
    train, val = files
    data = arithmetic_data(train, val, max_length=128, batch_size=2)
    module = PSFTModule(model="tiny", **module_kwargs)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            OldPolicy(refresh_every_n_steps=refresh_every_n_steps),
            ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0),
        ],
    )
    trainer.fit(module, datamodule=data)
    return module, root / "checkpoints" / "last.ckpt"


TINY_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def tiny_fit_args(
    root: Path, files: tuple[str, str], steps: int = 2, *extra: str, logger: bool = True
) -> list[str]:
    """CLI arguments for configs/tiny.yaml: ``steps`` optimizer steps with validation after the last,
    the small data ``files``, 4 validation examples, outputs (and, with ``logger``, events) under ``root``."""
    train, val = files
    return [
        f"--config={TINY_YAML}",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        *([f"--trainer.logger.init_args.save_dir={root}"] if logger else []),
        f"--data.train_files=[{train}]",
        f"--data.val_files=[{val}]",
        "--data.max_val_examples=4",
        *extra,
    ]


# Set in this process by in-process Lightning runs (and by torchrun): a `psft` subprocess that inherits
# them believes another launcher started it and waits for ranks that never come.
LAUNCHER_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")
LAUNCHER_ENV += ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment for a ``psft`` subprocess, one thread, without launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("PL_")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}
