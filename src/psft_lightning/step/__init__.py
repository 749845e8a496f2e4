"""The step's free functions: per-token statistics of a batch, the objective's inputs built from them,
and one training micro-batch from batch to loss and metric contributions."""

from psft_lightning.step.stats import objective_inputs, token_logprobs, token_stats
from psft_lightning.step.train import StepResult, train_micro_batch

__all__ = ["StepResult", "objective_inputs", "token_logprobs", "token_stats", "train_micro_batch"]
