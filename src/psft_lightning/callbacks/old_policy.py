"""OldPolicy: the one owner of pi_old. It holds it, refreshes it every N optimizer steps, and saves it.

pi_old itself is ``policies.old_policy`` (a weight snapshot or a lookahead cache behind one interface),
made by ``PSFTModule.make_old_policy`` from the module's models at fit start and kept here alone; the
module reads it back (``PSFTModule.old``) to hand it to the step, which asks it for old log-probs. The
callback never writes into the module: the module asks it which ``mode`` to build a sharded snapshot
for (``held_by``). Its schedule: the refresh steps, the steps each pi_old serves, and for
``lookahead`` the batches of those steps, taken from the data module's deterministic plan. Both modes
give the same losses; objectives that never need an old policy cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
from torch import Tensor

from psft_lightning.data.batching import StepBatches
from psft_lightning.errors import ConfigError
from psft_lightning.policies import Mode, OldPolicyModel

NEVER = "never"


class OldPolicy(L.Callback):
    """Refresh pi_old every ``refresh_every_n_steps`` optimizer steps.

    The official recipe (global batch 64, mini-batch 8) takes 8 optimizer steps per snapshot, hence
    the default. The schedule is anchored at the objective's first step that needs the old policy
    (step 0 for ``psft``, ``warmup_steps`` for ``psft_warmup``), and a refresh always happens then.

    ``refresh_every_n_steps: never`` snapshots once, at that first step, and never refreshes: pi_old stays
    the policy the objective started from (a fixed denominator, the ablation the official repository's
    discussion reports as training poorly). It needs ``mode: snapshot``: a lookahead would have to
    compute the old log-probs of every later step at once.

    Args:
        refresh_every_n_steps: optimizer steps per pi_old, or ``never``.
        mode: ``snapshot`` (frozen weight copy) or ``lookahead`` (no copy; needs the training
            batches from PSFTDataModule, whose plan is known in advance).
    """

    def __init__(self, refresh_every_n_steps: int | Literal["never"] = 8, mode: Mode = "snapshot") -> None:
        if refresh_every_n_steps != NEVER and (
            isinstance(refresh_every_n_steps, bool)
            or not isinstance(refresh_every_n_steps, int)
            or refresh_every_n_steps < 1
        ):
            raise ConfigError(
                f"OldPolicy refresh_every_n_steps must be >= 1, got {refresh_every_n_steps!r} (or 'never': "
                "one snapshot, never refreshed)"
            )
        if mode not in ("snapshot", "lookahead"):
            raise ConfigError(f"OldPolicy mode must be snapshot or lookahead, got {mode!r}")
        if refresh_every_n_steps == NEVER and mode != "snapshot":
            raise ConfigError(
                "OldPolicy refresh_every_n_steps: never needs mode: snapshot (a lookahead would have to "
                f"compute the old log-probs of every later step at once), got mode {mode!r}"
            )
        self.refresh_every_n_steps = refresh_every_n_steps
        self.mode = mode
        self.old: OldPolicyModel | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "OldPolicy"

    @property
    def active(self) -> bool:
        return self.old is not None

    @property
    def refreshes(self) -> int:
        return self.old.refreshes if self.old is not None else 0

    @property
    def last_refresh_step(self) -> int | None:
        return self.old.refreshed_at if self.old is not None else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not pl_module.objective.needs().old_policy:
            return
        self.old = pl_module.make_old_policy(self.mode)
        if self._restored is not None:
            self._apply(self._restored)
        self._restored = None

    def is_due(self, step: int, start: int) -> bool:
        """Whether pi_old is refreshed before step ``step``; ``start`` is the objective's first step that
        uses it (``Needs.old_policy_from``), before which it never is."""
        last = self.last_refresh_step
        if step < start or last == step:
            return False
        if last is None:
            return True
        if self.refresh_every_n_steps == NEVER:
            return False
        return (step - start) % self.refresh_every_n_steps == 0

    def served_steps(self, step: int, start: int) -> range:
        """The steps after refresh ``step`` that this pi_old serves, up to the next refresh. Not cut at
        ``max_steps``: a run resumed with a larger ``max_steps`` still finds its old log-probs. Only
        ``lookahead`` asks, which ``never`` refuses."""
        end = step + 1
        while (end - start) % self.refresh_every_n_steps != 0:
            end += 1
        return range(step + 1, end)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        start = pl_module.objective.needs().old_policy_from
        step = trainer.global_step
        if self.active and self.is_due(step, start):
            # the precision of the training step: bf16-mixed log-probs on both sides of PSFT's ratio
            with trainer.precision_plugin.train_step_context():
                self.old.refresh(
                    step, lambda: self._batches(trainer, pl_module, self.served_steps(step, start))
                )

    def _batches(
        self, trainer: L.Trainer, pl_module: L.LightningModule, steps: range
    ) -> Iterator[tuple[tuple[int, int], dict]]:
        """The micro-batches of ``steps``, on the module's device, keyed by (step, micro-batch)."""
        loader = trainer.train_dataloader
        if not isinstance(loader, StepBatches):
            raise ConfigError(
                "OldPolicy mode 'lookahead' needs the training batches of coming steps in advance, which "
                f"PSFTDataModule provides; this run's train loader is a {type(loader).__name__}. "
                "Use mode: snapshot with your own data module."
            )
        for step in steps:
            for micro, batch in enumerate(loader.step_micro_batches(step)):
                yield (step, micro), {k: _to(v, pl_module.device) for k, v in batch.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.active:
            pl_module.log("psft/refreshes", float(self.refreshes), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        held = self.old.state_dict() if self.old is not None else NOTHING_HELD
        return {"refresh_every_n_steps": self.refresh_every_n_steps, "mode": self.mode, **held}

    def _apply(self, state: dict[str, Any]) -> None:
        if state.get("mode", "snapshot") != self.mode:
            raise ConfigError(
                f"the checkpoint's OldPolicy mode is {state.get('mode', 'snapshot')!r} but this run uses "
                f"{self.mode!r}; resume with the same mode"
            )
        if self.old is not None:
            self.old.load_state_dict(state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.active:
            self._apply(state_dict)
        else:
            self._restored = state_dict


def held_by(trainer: L.Trainer | None) -> OldPolicy | None:
    """The run's OldPolicy callback (None without a trainer, or when the run has none)."""
    callbacks = getattr(trainer, "callbacks", None) or ()  # a bare stand-in trainer has none
    return next((c for c in callbacks if isinstance(c, OldPolicy)), None)


NOTHING_HELD = {
    "last_refresh_step": None,
    "refreshes": 0,
    "weights": None,
    "cache": {},
    "cache_by_rank": None,
}


def _to(value: Any, device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value
