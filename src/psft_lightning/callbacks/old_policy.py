"""OldPolicy: the frozen snapshot pi_old that PSFT's ratio is taken against, refreshed every N steps.

The callback owns the snapshot and its schedule; the objective only receives old log-probs. On a
refresh step the snapshot equals the policy, so no extra forward is run: the policy's own detached
log-probs are used (the ratio is exactly 1). Objectives that never need an old policy cost nothing.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from psft_lightning.errors import ConfigError


class OldPolicy(L.Callback):
    """Keep pi_old and refresh it every ``refresh_every_n_steps`` optimizer steps.

    The official recipe (global batch 64, mini-batch 8) takes 8 optimizer steps per snapshot, hence
    the default. The schedule is anchored at the objective's first step that needs the old policy
    (step 0 for ``psft``, ``warmup_steps`` for ``psft_warmup``), and a snapshot is always taken then.
    """

    def __init__(self, refresh_every_n_steps: int = 8) -> None:
        if refresh_every_n_steps < 1:
            raise ConfigError(f"OldPolicy refresh_every_n_steps must be >= 1, got {refresh_every_n_steps}")
        self.refresh_every_n_steps = refresh_every_n_steps
        self.model: nn.Module | None = None
        self.last_refresh_step: int | None = None
        self.refreshes = 0
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "OldPolicy"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not pl_module.objective.uses_old_policy:
            return
        self.model = pl_module.frozen_copy()
        if self._restored is not None and self._restored.get("weights") is not None:
            self.model.load_state_dict(self._restored["weights"])
            self.last_refresh_step = self._restored["last_refresh_step"]
            self.refreshes = self._restored.get("refreshes", 0)
        self._restored = None

    def is_due(self, step: int, start: int) -> bool:
        if self.last_refresh_step == step:
            return False
        if self.last_refresh_step is None:
            return True
        return step >= start and (step - start) % self.refresh_every_n_steps == 0

    @torch.no_grad()
    def refresh(self, policy: nn.Module, step: int) -> None:
        """Copy the policy's weights into the snapshot, tensor by tensor (local shards under FSDP)."""
        for old, new in zip(self.model.state_dict().values(), policy.state_dict().values(), strict=True):
            old.copy_(new)
        self.last_refresh_step = step
        self.refreshes += 1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        objective = pl_module.objective
        step = trainer.global_step
        if self.model is None or not objective.needs_old_logprobs(step):
            return
        if self.is_due(step, objective.old_policy_start_step()):
            self.refresh(pl_module.policy, step)
        if self.last_refresh_step == step:
            batch["old_is_policy"] = True
        else:
            batch["old_logprobs"] = pl_module.token_logprobs(self.model, batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.model is not None:
            pl_module.log("psft/refreshes", float(self.refreshes), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "refresh_every_n_steps": self.refresh_every_n_steps,
            "last_refresh_step": self.last_refresh_step,
            "refreshes": self.refreshes,
            "weights": self.model.state_dict() if self.model is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.model is not None and state_dict.get("weights") is not None:
            self.model.load_state_dict(state_dict["weights"])
            self.last_refresh_step = state_dict["last_refresh_step"]
            self.refreshes = state_dict.get("refreshes", 0)
        else:
            self._restored = state_dict
