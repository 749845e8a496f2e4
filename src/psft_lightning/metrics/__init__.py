"""Metric aggregation over micro-batches and ranks (torchmetrics), and the progress bar's short names."""

from psft_lightning.metrics.aggregate import StepMetrics, ValidationMetrics
from psft_lightning.metrics.progress import step_progress_bar

__all__ = ["StepMetrics", "ValidationMetrics", "step_progress_bar"]
