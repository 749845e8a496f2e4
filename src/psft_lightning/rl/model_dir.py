"""The RL stages start from a Hugging Face model directory, as ``psft export`` writes one."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from psft_lightning.errors import ConfigError
from psft_lightning.models import load_model, load_tokenizer


def check_model_dir(model_dir: Path) -> None:
    """Refuse a directory that is not a model before TRL is imported or any sampling starts."""
    if not (model_dir / "config.json").is_file():
        what = "does not exist" if not model_dir.exists() else "has no config.json"
        raise ConfigError(
            f"model directory {model_dir} {what}: give a Hugging Face model directory, e.g. one written by "
            "`psft export CHECKPOINT OUT_DIR`"
        )


def load_exported(model_dir: Path) -> tuple[nn.Module, object]:
    """The model (fp32, trainable) and its tokenizer (pad token set)."""
    return load_model(str(model_dir)), load_tokenizer(str(model_dir))
