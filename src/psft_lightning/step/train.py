"""One training micro-batch: batch + policies -> per-token statistics -> objective -> loss + metrics.

Token normalisation is written out here: every micro-batch's loss and metrics are contributions divided
by the whole optimizer step's loss-token count, so summing them over micro-batches and ranks gives the
step's token-mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from psft_lightning.data.batch import Batch
from psft_lightning.errors import DataError
from psft_lightning.objectives import Objective, ObjectiveOutput
from psft_lightning.policies import OldPolicyModel
from psft_lightning.step.stats import objective_inputs, token_stats


@dataclass
class StepResult:
    """The objective's output and the metric contributions of one micro-batch."""

    output: ObjectiveOutput
    metrics: dict[str, Tensor]


def train_micro_batch(
    objective: Objective,
    policy: nn.Module,
    reference: nn.Module | None,
    old: OldPolicyModel | None,
    batch: Batch | dict,
    step: int,
    steps_scale: int,
    batch_idx: int,
    chunk_size: int | None = None,
) -> StepResult:
    """Run ``objective`` on ``batch`` at optimizer ``step``; ``steps_scale`` is how many micro-batches
    share the step (accumulation x ranks), for a data module that gives no step token count."""
    needs = objective.needs()
    batch = Batch.of(batch)
    served = None
    if needs.old_logprobs_at(step):  # the one place that asks
        if old is None:
            raise RuntimeError(
                "the objective needs old-policy log-probs but no OldPolicy callback holds pi_old"
            )
        served = old.serve(batch, step)  # before the policy's forward (a LoRA snapshot swaps weights)
    stats = token_stats(policy, batch, reference if needs.reference else None, needs, chunk_size)
    n_local = stats.logprobs.numel()
    if n_local == 0 and batch.sequence_parallel is None:  # a slice may hold none; its group does
        raise DataError(
            f"training batch {batch_idx} has no loss tokens (all labels are -100); "
            "the loss would be NaN. "
            "Every example needs at least one response token within max_length."
        )
    num_tokens = batch.step_loss_tokens
    if num_tokens is None:  # a user's own datamodule: fall back to a per-micro-batch token-mean
        num_tokens = float(n_local * steps_scale)
    old_logprobs = served(stats.logprobs) if served is not None else None
    out = objective(objective_inputs(stats, needs, step, num_tokens, old_logprobs))
    denom = torch.as_tensor(num_tokens, dtype=torch.float32, device=stats.logprobs.device)
    metrics = {
        **out.metrics,
        "train/loss": out.loss.detach(),
        "train/entropy": stats.entropy.sum() / denom,
        "train/token_accuracy": stats.correct.sum() / denom,
        "perf/step_tokens": batch.input_tokens(),
    }
    if "train/nll" not in metrics:  # every objective's curve has the comparable cross-entropy
        metrics["train/nll"] = -stats.logprobs.detach().sum() / denom
    return StepResult(out, metrics)
