"""Metric aggregation over the micro-batches of a step (or a validation pass) and over ranks.

torchmetrics' sum and max metrics hold the running values and sync across processes when computed
(all-gather, then sum or max), so the logged value is the same on every rank. Training values are
token-weighted contributions (divided by the step's loss-token count), so their sum is the step's
token-mean; a name ending in ``_max`` is reduced with max. Validation sums fp64 totals and divides once.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, SumMetric


def _metric(kind: type[Metric], device: torch.device, dtype: torch.dtype = torch.float32) -> Metric:
    metric = kind(nan_strategy="disable").to(device)  # a NaN must reach the log, not be dropped
    return metric.set_dtype(dtype)  # after .to(): moving resets a metric's dtype to the default


class StepMetrics:
    """One optimizer step's metrics: per-micro-batch contributions summed (``_max``: maxed)."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def update(self, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float().reshape(())
            if name not in self._metrics:
                kind = MaxMetric if name.endswith("_max") else SumMetric
                self._metrics[name] = _metric(kind, value.device)
            self._metrics[name].update(value)

    def compute(self) -> dict[str, Tensor]:
        """The step's values, synced over ranks (sums first, then maxima); starts the next step."""
        names = sorted(self._metrics, key=lambda name: name.endswith("_max"))
        values = {name: self._metrics[name].compute() for name in names}
        self._metrics = {}
        return values


VALIDATION = ("nll", "correct", "entropy", "tokens")


class ValidationMetrics:
    """fp64 totals of a validation pass: the loss tokens' NLL, correct argmaxes, entropy and count."""

    def __init__(self, device: torch.device) -> None:
        self._sums = {name: _metric(SumMetric, device, torch.float64) for name in VALIDATION}

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
