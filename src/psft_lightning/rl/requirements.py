"""TRL is an optional dependency: its absence is a one-line error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from psft_lightning.errors import ConfigError


def require_trl() -> ModuleType:
    try:
        return importlib.import_module("trl")
    except ImportError as err:
        raise ConfigError(
            f"psft grpo and psft dpo run on TRL, which cannot be imported ({err}); install it with "
            "pip install 'psft-lightning[rl]'"
        ) from err
