"""What a checkpoint carries besides weights and optimizer: RNG streams and the lr schedule's horizon.

Kept apart from the module so resume reads in one place: saved with every checkpoint, checked and kept
at load (a checkpoint of another objective or model is refused), applied when training starts.
"""

from __future__ import annotations

from typing import Any

from psft_lightning.checkpointing import RNG_KEY, check_resumable, rng_states, set_rng_states
from psft_lightning.schedule import Schedule, follow_new_horizon

SCHEDULE_KEY = "psft_schedule_total_steps"


class RunState:
    """RNG and schedule horizon across a resume; ``checkpoint_step`` is the loaded checkpoint's step."""

    def __init__(self) -> None:
        self.schedule_total: int | None = None  # this run's, set by configure_optimizers
        self.checkpoint_step: int | None = None
        self._restored_rng: dict | None = None
        self._saved_schedule_total: int | None = None

    def save(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = rng_states()
        checkpoint[SCHEDULE_KEY] = self.schedule_total

    def load(self, checkpoint: dict[str, Any], hparams: dict[str, Any], ckpt_path: str | None) -> None:
        """Refuse a checkpoint of another objective or model; keep its RNG state for ``start``."""
        check_resumable(checkpoint.get("hyper_parameters", {}), hparams, ckpt_path)
        self._restored_rng = checkpoint.get(RNG_KEY)
        self.checkpoint_step = checkpoint.get("global_step")
        self._saved_schedule_total = checkpoint.get(SCHEDULE_KEY)

    def start(self, scheduler, schedule: Schedule, is_global_zero: bool) -> None:
        """At train start, after the sanity check's draws: restore RNG; follow a changed horizon."""
        if self._restored_rng is not None:
            set_rng_states(self._restored_rng)
            self._restored_rng = None
        saved = self._saved_schedule_total
        if saved not in (None, self.schedule_total):
            follow_new_horizon(scheduler, self.schedule_total, saved, schedule, is_global_zero)
        self._saved_schedule_total = None
