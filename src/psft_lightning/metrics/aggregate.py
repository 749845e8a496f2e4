"""Metric aggregation over the micro-batches of a step (or a validation pass) and over ranks.

torchmetrics' sum and max metrics hold the running values and sync across processes when computed
(all-gather, then sum or max), so the logged value is the same on every rank. Training values are
token-weighted contributions (divided by the step's loss-token count), so their sum is the step's
token-mean; a name ending in ``_max`` is reduced with max.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, SumMetric


def grad_norm(model: torch.nn.Module) -> Tensor | None:
    """The total gradient norm over ``model``'s parameters (a full tensor under FSDP2), or None."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def metric(kind: type[Metric], device: torch.device, dtype: torch.dtype = torch.float32) -> Metric:
    metric = kind(nan_strategy="disable").to(device)  # a NaN must reach the log, not be dropped
    return metric.set_dtype(dtype)  # after .to(): moving resets a metric's dtype to the default


class StepMetrics:
    """One optimizer step's metrics: per-micro-batch contributions summed (``_max``: maxed)."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._last_end: float | None = None

    def start_clock(self) -> None:
        """Training starts: the first step's tokens/s counts from now."""
        self._last_end = time.perf_counter()

    def update(self, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float().reshape(())
            if name not in self._metrics:
                kind = MaxMetric if name.endswith("_max") else SumMetric
                self._metrics[name] = metric(kind, value.device)
            self._metrics[name].update(value)

    def compute(self) -> dict[str, Tensor]:
        """The step's values, synced over ranks (sums first, then maxima); starts the next step.
        ``perf/step_tokens`` (input tokens) becomes ``train/tokens_per_sec`` since the last step."""
        names = sorted(self._metrics, key=lambda name: name.endswith("_max"))
        values = {name: self._metrics[name].compute() for name in names}
        self._metrics = {}
        now = time.perf_counter()
        tokens = values.pop("perf/step_tokens", None)
        if tokens is not None and self._last_end is not None:
            values["train/tokens_per_sec"] = tokens / max(now - self._last_end, 1e-9)
        self._last_end = now
        return values
