"""A plugin module that registers its objective by name when it is imported (README's pattern)."""

from __future__ import annotations

from psft_lightning.objectives import register_objective
from psft_lightning.objectives.ce import CE


@register_objective("sweep_registered")
class Registered(CE):
    """Plain SFT under another name."""
