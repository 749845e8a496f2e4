"""OldPolicy: pi_old, the policy PSFT's ratio is taken against, refreshed every N optimizer steps.

The callback owns pi_old and its schedule; the objective only receives old log-probs. On a refresh
step pi_old equals the policy, so no extra forward is run: the policy's own detached log-probs are
used (the ratio is exactly 1). Two ways to hold pi_old:

- ``snapshot``: a frozen copy of the weights, run on each later batch (one extra no-grad forward per
  micro-batch, one extra copy of the weights in memory);
- ``lookahead`` (verl's way): no copy at all. At a refresh the current policy, before it is updated,
  computes the old log-probs of the micro-batches of the next N-1 steps, taken from the data
  module's deterministic plan; they are cached and served on those steps.

Both give the same losses. Objectives that never need an old policy cost nothing.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from psft_lightning.errors import ConfigError
from psft_lightning.sharding import gathered, is_sharded, per_rank, sharded_like, this_rank

Mode = Literal["snapshot", "lookahead"]


class OldPolicy(L.Callback):
    """Keep pi_old and refresh it every ``refresh_every_n_steps`` optimizer steps.

    The official recipe (global batch 64, mini-batch 8) takes 8 optimizer steps per snapshot, hence
    the default. The schedule is anchored at the objective's first step that needs the old policy
    (step 0 for ``psft``, ``warmup_steps`` for ``psft_warmup``), and a refresh always happens then.

    Args:
        refresh_every_n_steps: optimizer steps per pi_old.
        mode: ``snapshot`` (frozen weight copy) or ``lookahead`` (no copy; needs the training
            batches from PSFTDataModule, whose plan is known in advance).
    """

    def __init__(self, refresh_every_n_steps: int = 8, mode: Mode = "snapshot") -> None:
        if refresh_every_n_steps < 1:
            raise ConfigError(f"OldPolicy refresh_every_n_steps must be >= 1, got {refresh_every_n_steps}")
        if mode not in ("snapshot", "lookahead"):
            raise ConfigError(f"OldPolicy mode must be snapshot or lookahead, got {mode!r}")
        self.refresh_every_n_steps = refresh_every_n_steps
        self.mode = mode
        self.model: nn.Module | None = None
        self.active = False
        self.last_refresh_step: int | None = None
        self.refreshes = 0
        self.cache: dict[tuple[int, int], Tensor] = {}
        self._micro: tuple[int, int] = (-1, -1)  # (optimizer step, micro-batch index) of the last batch
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "OldPolicy"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not pl_module.objective.needs().old_policy:
            return
        self.active = True
        if self.mode == "snapshot":
            self.model = pl_module.frozen_copy()
        if self._restored is not None:
            self._apply(self._restored)
        self._restored = None

    def is_due(self, step: int, start: int) -> bool:
        if self.last_refresh_step == step:
            return False
        if self.last_refresh_step is None:
            return True
        return step >= start and (step - start) % self.refresh_every_n_steps == 0

    @torch.no_grad()
    def refresh(self, policy: nn.Module, step: int) -> None:
        """Copy the policy's weights into the snapshot, tensor by tensor (local shards under FSDP).

        Matched by key: under LoRA the snapshot holds the adapter tensors only (``AdapterSnapshot``).
        """
        current = policy.state_dict()
        for key, old in self.model.state_dict().items():
            old.copy_(current[key])
        self.last_refresh_step = step
        self.refreshes += 1

    def lookahead_steps(self, step: int, start: int) -> range:
        """The steps after refresh ``step`` that this pi_old serves, up to the next refresh. Not cut at
        ``max_steps``: a run resumed with a larger ``max_steps`` still finds its old log-probs."""
        end = step + 1
        while (end - start) % self.refresh_every_n_steps != 0:
            end += 1
        return range(step + 1, end)

    @torch.no_grad()
    def look_ahead(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, start: int) -> None:
        """Old log-probs of the coming steps' micro-batches under the current (not yet updated) policy."""
        loader = trainer.train_dataloader
        if not hasattr(loader, "step_micro_batches"):
            raise ConfigError(
                "OldPolicy mode 'lookahead' needs the training batches of coming steps in advance, which "
                f"PSFTDataModule provides; this run's train loader is a {type(loader).__name__}. "
                "Use mode: snapshot with your own data module."
            )
        policy = pl_module.policy
        was_training = policy.training
        policy.eval()
        self.cache = {}
        for future in self.lookahead_steps(step, start):
            for micro, batch in enumerate(loader.step_micro_batches(future)):
                batch = {k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                self.cache[(future, micro)] = pl_module.token_logprobs(policy, batch)
        policy.train(was_training)
        self.last_refresh_step = step
        self.refreshes += 1

    def _micro_index(self, step: int) -> int:
        last_step, last_micro = self._micro
        self._micro = (step, last_micro + 1 if last_step == step else 0)
        return self._micro[1]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        needs = pl_module.objective.needs()
        step = trainer.global_step
        micro = self._micro_index(step)
        if not self.active or not needs.old_logprobs_at(step):
            return
        start = needs.old_policy_from
        if self.is_due(step, start):
            if self.mode == "snapshot":
                self.refresh(pl_module.policy, step)
            else:
                self.look_ahead(trainer, pl_module, step, start)
        if self.last_refresh_step == step:
            batch["old_is_policy"] = True
        elif self.mode == "snapshot":
            batch["old_logprobs"] = pl_module.token_logprobs(self.model, batch)
        else:
            batch["old_logprobs"] = self._cached(step, micro, batch)

    def _cached(self, step: int, micro: int, batch: dict) -> Tensor:
        old = self.cache.pop((step, micro), None)
        n_loss = int((batch["labels"][:, 1:] != -100).sum())
        if old is None or old.numel() != n_loss:
            raise RuntimeError(
                f"OldPolicy lookahead has no old log-probs for step {step}, micro-batch {micro} "
                f"(cached: {sorted(self.cache)[:4]}...): the loader did not follow the data module's plan"
            )
        return old.to(batch["labels"].device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.active:
            pl_module.log("psft/refreshes", float(self.refreshes), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        # under several processes each rank caches its own micro-batches; rank 0 alone writes this state
        caches = per_rank({key: value.cpu() for key, value in self.cache.items()})
        return {
            "refresh_every_n_steps": self.refresh_every_n_steps,
            "mode": self.mode,
            "last_refresh_step": self.last_refresh_step,
            "refreshes": self.refreshes,
            # an FSDP2 snapshot is the module's ``old_policy``: the sharded checkpoint holds its shards;
            # an adapter snapshot's shards are gathered here
            "weights": gathered(self.model.state_dict())
            if self.model is not None and not is_sharded(self.model)
            else None,
            "cache": caches[0],
            "cache_by_rank": caches if len(caches) > 1 else None,
        }

    def _apply(self, state: dict[str, Any]) -> None:
        if state.get("mode", "snapshot") != self.mode:
            raise ConfigError(
                f"the checkpoint's OldPolicy mode is {state.get('mode', 'snapshot')!r} but this run uses "
                f"{self.mode!r}; resume with the same mode"
            )
        if self.model is not None and state.get("weights") is not None:
            self.model.load_state_dict(sharded_like(state["weights"], self.model.state_dict()))
        self.last_refresh_step = state["last_refresh_step"]
        self.refreshes = state.get("refreshes", 0)
        by_rank = state.get("cache_by_rank")
        self.cache = dict((by_rank[this_rank()] if by_rank else state.get("cache")) or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.active:
            self._apply(state_dict)
        else:
            self._restored = state_dict
