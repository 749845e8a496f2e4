"""Stop a run whose loss or gradient norm becomes non-finite before the optimizer applies it.

A NaN/inf loss or gradient norm is checked once per optimizer step, after the last backward and before
clipping and the update, so the weights never take a non-finite step. The default stops the run
(``Diverged``: the ``psft`` command exits with status 3); ``max_skipped_steps`` first skips up to that
many such steps (their gradients are dropped, the lr schedule moves on), as large-scale trainers do.
Every checkpoint is checked too: weights that became non-finite in an update are never written, so
``last.ckpt`` stays the last finite one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from psft_lightning.errors import ConfigError, Diverged
from psft_lightning.resume import checkpoint_step

log = logging.getLogger(__name__)


class StopOnNonFinite(L.Callback):
    """Stop (or skip up to ``max_skipped_steps`` steps) when the loss or gradient norm is not finite.

    Args:
        max_skipped_steps: optimizer steps with a non-finite loss or gradient norm to skip (gradients
            dropped, no update) before the run stops; 0 (default) stops at the first.
    """

    def __init__(self, max_skipped_steps: int = 0) -> None:
        if max_skipped_steps < 0:
            raise ConfigError(f"StopOnNonFinite max_skipped_steps must be >= 0, got {max_skipped_steps}")
        self.max_skipped_steps = max_skipped_steps
        self.skipped = 0
        self._loss: Tensor | None = None  # this optimizer step's loss, summed over its micro-batches

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        loss, self._loss = self._loss, None
        norm = pl_module.step_grad_norm()  # PSFTModule's, computed once for this check and its log
        values = {"loss": loss, "gradient norm": norm}
        bad = {name: float(v) for name, v in values.items() if v is not None and not torch.isfinite(v).all()}
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        step = trainer.global_step + 1  # the step being taken, as logged and named in checkpoints
        what = (
            " and ".join(f"the {name} is {value}" for name, value in bad.items())
            or "the loss on another rank is not finite"
        )
        if self.skipped < self.max_skipped_steps:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            log.warning(
                "step %d: %s; the step is skipped, no update (%d of max_skipped_steps %d)",
                step,
                what,
                self.skipped,
                self.max_skipped_steps,
            )
            return
        raise Diverged(
            f"training diverged at step {step} (objective {pl_module.hparams.get('objective_name')}): {what}"
            f", so the step was not applied. {_kept(trainer)} Lower model.lr, set "
            "trainer.gradient_clip_val, or check the data of this step; callback "
            "psft_lightning.callbacks.StopOnNonFinite with max_skipped_steps: N skips up to N such steps."
        )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Abort a save whose weights are not finite: the file on disk stays the last finite one."""
        bad = nonfinite(checkpoint.get("state_dict", {}))
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise Diverged(
            f"training diverged at step {trainer.global_step} (objective "
            f"{pl_module.hparams.get('objective_name')}): its update made weights non-finite "
            f"({shown or 'on another rank'}), so they were not saved. {_kept(trainer)} "
            "Lower model.lr or set trainer.gradient_clip_val."
        )


def nonfinite(tensors: dict[str, Tensor]) -> list[str]:
    """Names of the floating tensors holding a NaN or inf. One fused norm over all of them first (a
    tenth of a second for 135M weights, where an element-wise check takes seconds per save): finite,
    it proves every element finite; only otherwise (or on overflow of huge values) each is checked."""
    floats = {
        name: value.to_local() if hasattr(value, "to_local") else value  # a DTensor shard (FSDP2)
        for name, value in tensors.items()
        if isinstance(value, Tensor) and value.is_floating_point()
    }
    if not floats or torch.isfinite(torch.nn.utils.get_total_norm(list(floats.values()))):
        return []
    return [name for name, value in floats.items() if not torch.isfinite(value).all()]


def _kept(trainer: L.Trainer) -> str:
    """Which checkpoint a resume would use now."""
    callback = trainer.checkpoint_callback
    path = callback.last_model_path if isinstance(callback, ModelCheckpoint) else ""
    if path and Path(path).exists():
        return f"The newest finite checkpoint is {path} (step {checkpoint_step(Path(path))})."
    return "No checkpoint was written."
