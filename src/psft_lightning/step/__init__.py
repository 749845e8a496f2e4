"""The step's free functions: per-token statistics of a batch and the objective's inputs built from them."""

from psft_lightning.step.stats import objective_inputs, token_stats

__all__ = ["objective_inputs", "token_stats"]
