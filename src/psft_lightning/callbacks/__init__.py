"""Callbacks that own training-time state beside the module."""

from psft_lightning.callbacks.clipped_tokens import ClippedTokens
from psft_lightning.callbacks.dashboard import Dashboard
from psft_lightning.callbacks.divergence import StopOnNonFinite
from psft_lightning.callbacks.generation_eval import GenerationEval
from psft_lightning.callbacks.old_policy import OldPolicy
from psft_lightning.callbacks.periodic import PeriodicCheckpoint

__all__ = [
    "ClippedTokens",
    "Dashboard",
    "GenerationEval",
    "OldPolicy",
    "PeriodicCheckpoint",
    "StopOnNonFinite",
]
