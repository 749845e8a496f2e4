"""pi_old, the policy PSFT's ratio is taken against, as one object with one interface.

``serve(batch, step)`` is the step's one question, asked before the policy's forward: pi_old's
log-probs of a micro-batch's loss tokens, as a function of the policy's own (always a tensor). On the
step pi_old was refreshed at, pi_old is the policy itself, so they are the policy's own log-probs,
detached, and no extra forward runs; that case is decided here, inside ``serve``, from what the held
form's ``logprobs`` reports. ``refresh(step, coming)`` makes the current policy pi_old. Plain
PyTorch: the forward that turns a model and a batch into log-probs is given by whoever builds pi_old
(``step.token_logprobs`` at the run's chunk size, as evaluation is given its scoring function), when
to refresh is the OldPolicy callback's business, and nothing else knows which way pi_old is held:

- ``SnapshotOldPolicy``: a frozen copy of the weights (an FSDP2 twin sharded like the policy, or under
  LoRA a copy of the adapter tensors only), run on each later micro-batch;
- ``LookaheadOldPolicy`` (verl's way): no copy. At a refresh the current policy, before it is updated,
  computes the old log-probs of the micro-batches of the steps this pi_old serves; they are cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from psft_lightning.data.batch import Batch
from psft_lightning.lora import AdapterSnapshot
from psft_lightning.policies.twins import frozen
from psft_lightning.sharding import copy_local_shards, gathered, is_sharded, per_rank, sharded_like, this_rank

Mode = Literal["snapshot", "lookahead"]
LogprobsFn = Callable[[nn.Module, Batch], Tensor]  # (model, batch) -> log-probs at the loss positions
Served = Callable[[Tensor], Tensor]  # the policy's log-probs at the loss positions -> pi_old's
Coming = Callable[
    [], Iterable[tuple[tuple[int, int], Batch | dict]]
]  # ((step, micro-batch), batch) of served steps


class OldPolicyModel:
    """What every way of holding pi_old shares: when it was last refreshed and how often."""

    def __init__(self, policy: nn.Module, logprobs_fn: LogprobsFn) -> None:
        self.policy = policy
        self.logprobs_fn = logprobs_fn
        self.refreshed_at: int | None = None
        self.refreshes = 0

    @torch.no_grad()
    def refresh(self, step: int, coming: Coming) -> None:
        """Make the current policy pi_old from ``step`` on; ``coming`` yields the batches it serves."""
        self._refresh(coming)
        self.refreshed_at = step
        self.refreshes += 1

    def serve(self, batch: Batch | dict, step: int) -> Served:
        """pi_old's log-probs at ``batch``'s loss positions at optimizer ``step``, as a function of the
        policy's own there: its held ones, or on the step pi_old was refreshed at (pi_old is the policy
        then) the policy's own, detached, with no extra forward. Asked before the policy's forward,
        inside which a LoRA adapter swap must not run."""
        held = self.logprobs(batch, step)
        return (lambda own: own.detach()) if held is None else (lambda own: held)

    def logprobs(self, batch: Batch | dict, step: int) -> Tensor | None:
        """What the held form gives at ``step``: None on the refresh step, where it holds nothing
        apart from the policy. Only ``serve`` reads it."""
        raise NotImplementedError

    def _refresh(self, coming: Coming) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"last_refresh_step": self.refreshed_at, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refreshed_at = state["last_refresh_step"]
        self.refreshes = state.get("refreshes", 0)


class SnapshotOldPolicy(OldPolicyModel):
    """A frozen copy of the policy's weights (one extra no-grad forward per micro-batch)."""

    def __init__(
        self, policy: nn.Module, logprobs_fn: LogprobsFn, model: nn.Module | AdapterSnapshot
    ) -> None:
        super().__init__(policy, logprobs_fn)
        self.model = model

    def _refresh(self, coming: Coming) -> None:
        """Copy the policy's weights into the snapshot, tensor by tensor (local shards under FSDP),
        matched by key: under LoRA the snapshot holds the adapter tensors only. A snapshot that keeps
        its Linears in autocast's dtype gets them cast here, once per refresh."""
        current = self.policy.state_dict()
        for key, old in self.model.state_dict().items():
            old.copy_(current[key])

    @torch.no_grad()
    def logprobs(self, batch: Batch | dict, step: int) -> Tensor | None:
        if step == self.refreshed_at:
            return None
        if isinstance(self.model, AdapterSnapshot):
            with self.model.swapped_into(self.policy) as policy:
                return self.logprobs_fn(policy, batch).detach()
        logprobs = self.logprobs_fn(self.model, batch).detach()
        if is_sharded(self.model):
            self.model.reshard()  # free the gathered root, which a later refresh would leave stale
        return logprobs

    def state_dict(self) -> dict[str, Any]:
        # an FSDP2 snapshot is the module's ``old_policy``: the sharded checkpoint holds its shards;
        # an adapter snapshot's shards are gathered here
        weights = None if is_sharded(self.model) else gathered(self.model.state_dict())
        return {**super().state_dict(), "weights": weights, "cache": {}, "cache_by_rank": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("weights") is not None:
            self.model.load_state_dict(sharded_like(state["weights"], self.model.state_dict()))
        super().load_state_dict(state)


class LookaheadOldPolicy(OldPolicyModel):
    """No copy: old log-probs of the coming micro-batches, computed at the refresh and cached."""

    def __init__(self, policy: nn.Module, logprobs_fn: LogprobsFn) -> None:
        super().__init__(policy, logprobs_fn)
        self.cache: dict[tuple[int, int], Tensor] = {}
        self._micro: tuple[int, int] = (-1, -1)  # (optimizer step, micro-batch index) of the last batch

    def _refresh(self, coming: Coming) -> None:
        was_training = self.policy.training
        self.policy.eval()
        self.cache = {}
        for key, batch in coming():
            self.cache[key] = self.logprobs_fn(self.policy, batch).detach()
            if is_sharded(self.policy):
                self.policy.reshard()
        self.policy.train(was_training)

    def logprobs(self, batch: Batch | dict, step: int) -> Tensor | None:
        last_step, last_micro = self._micro
        self._micro = (step, last_micro + 1 if last_step == step else 0)
        if step == self.refreshed_at:
            return None
        micro = self._micro[1]
        old = self.cache.pop((step, micro), None)
        batch = Batch.of(batch)
        if old is None or old.numel() != batch.num_loss_tokens:
            raise RuntimeError(
                f"OldPolicy lookahead has no old log-probs for step {step}, micro-batch {micro} "
                f"(cached: {sorted(self.cache)[:4]}...): the loader did not follow the data module's plan"
            )
        return old.to(batch.labels.device)

    def state_dict(self) -> dict[str, Any]:
        # under several processes each rank caches its own micro-batches; rank 0 alone writes this state
        caches = per_rank({key: value.cpu() for key, value in self.cache.items()})
        cache_by_rank = caches if len(caches) > 1 else None
        return {**super().state_dict(), "weights": None, "cache": caches[0], "cache_by_rank": cache_by_rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        by_rank = state.get("cache_by_rank")
        self.cache = dict((by_rank[this_rank()] if by_rank else state.get("cache")) or {})


def build_old_policy(
    mode: Mode,
    policy: nn.Module,
    twin: nn.Module | None,
    lora: bool,
    logprobs_fn: LogprobsFn,
    linear_dtype: torch.dtype | None = None,
) -> OldPolicyModel:
    """pi_old held as ``mode`` says: a lookahead cache, or a snapshot (the adapters under LoRA, the
    sharded ``twin`` built in ``configure_model`` under FSDP2, else a frozen copy made now, its Linears
    in ``linear_dtype`` when given: autocast's, so each refresh casts them once, not each forward)."""
    if mode == "lookahead":
        return LookaheadOldPolicy(policy, logprobs_fn)
    if lora:
        return SnapshotOldPolicy(policy, logprobs_fn, AdapterSnapshot(policy))
    if not is_sharded(policy):
        return SnapshotOldPolicy(policy, logprobs_fn, frozen(policy, linear_dtype))
    if twin is None:
        raise RuntimeError("configure_model built no sharded old-policy snapshot for this objective")
    copy_local_shards(twin, policy)
    return SnapshotOldPolicy(policy, logprobs_fn, twin)
