"""Validation metrics: fp64 totals over the pass's micro-batches and ranks, divided once, and logged.

``val/loss`` of a full pass before training (``num_sanity_val_steps: -1``) is the step-0 baseline of the
curve; after that it is logged at the optimizer steps taken.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch import Tensor
from torchmetrics.aggregation import SumMetric

from psft_lightning.metrics.aggregate import metric

log = logging.getLogger(__name__)

VALIDATION = ("nll", "correct", "entropy", "tokens")


class ValidationMetrics:
    """fp64 totals of a validation pass: the loss tokens' NLL, correct argmaxes, entropy and count."""

    def __init__(self, device: torch.device) -> None:
        self._sums = {name: metric(SumMetric, device, torch.float64) for name in VALIDATION}

    def update(self, logprobs: Tensor, correct: Tensor, entropy: Tensor) -> None:
        values = (-logprobs.double().sum(), correct.double().sum(), entropy.double().sum())
        for name, value in zip(VALIDATION, values, strict=False):
            self._sums[name].update(value)
        count = torch.tensor(float(logprobs.numel()), dtype=torch.float64, device=logprobs.device)
        self._sums["tokens"].update(count)

    def compute(self) -> dict[str, float] | None:
        """``val/loss``, ``val/token_accuracy`` and ``val/entropy`` over every rank; None without tokens."""
        nll, correct, entropy, n = (self._sums[name].compute().item() for name in VALIDATION)
        if n == 0:
            return None
        return {"val/loss": nll / n, "val/token_accuracy": correct / n, "val/entropy": entropy / n}


def log_validation(module: L.LightningModule, metrics: dict[str, float], checkpoint_step: int | None) -> None:
    """Log a pass's metrics: the sanity pass only as the step-0 baseline, a fit's at its step, and a
    ``psft validate`` run's line at the checkpoint's step."""
    trainer = module.trainer
    if trainer.sanity_checking:
        if trainer.num_sanity_val_steps == float("inf") and module.logger is not None:
            module.logger.log_metrics(metrics, step=module.global_step)  # 0 unless resumed
            if trainer.is_global_zero:
                when = "before training" if module.global_step == 0 else "on resume"
                log.info("step %d (%s): %s", module.global_step, when, _fmt(metrics))
        return
    for name, value in metrics.items():
        module.log(name, value, prog_bar=name == "val/loss", sync_dist=False)
    fitting = trainer.state.fn == "fit"
    if fitting:  # x-axis = optimizer steps taken, as for the step-0 baseline
        module.log("step", float(module.global_step), sync_dist=False)
    if trainer.is_global_zero:
        step = module.global_step if fitting or checkpoint_step is None else checkpoint_step
        log.info("step %d: %s", step, _fmt(metrics))


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
