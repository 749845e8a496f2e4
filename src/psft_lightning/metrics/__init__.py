"""Metric aggregation over micro-batches and ranks (torchmetrics), validation logging, and the
progress bar's short names."""

from psft_lightning.metrics.aggregate import StepMetrics, grad_norm
from psft_lightning.metrics.progress import step_progress_bar
from psft_lightning.metrics.validation import ValidationMetrics, log_validation

__all__ = ["StepMetrics", "ValidationMetrics", "grad_norm", "log_validation", "step_progress_bar"]
