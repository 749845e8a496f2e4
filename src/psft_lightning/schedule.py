"""The optimizer, and learning-rate schedules as multipliers of the base rate, per optimizer step."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

Schedule = Literal["cosine", "linear", "constant"]
AdamWImpl = Literal["fused", "foreach", "for-loop"]


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float
) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine/linear decay to ``min_lr_ratio`` or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def adamw(
    policy: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    implementation: AdamWImpl = "fused",
):
    """AdamW over the trainable parameters; no weight decay on norms and biases. ``implementation`` is
    torch's kernel choice: ``fused`` (one kernel per parameter group, CPU and CUDA), ``foreach``
    (batched tensor ops) or ``for-loop`` (one parameter at a time, torch's CPU default)."""
    decay, no_decay = [], []
    for name, param in policy.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kernel[implementation])
    # The fused kernel can also unscale fp16 GradScaler gradients itself, and Lightning's mixed-precision
    # plugin then refuses gradient clipping (also under bf16-mixed, which has no scaler). Without the flag
    # a GradScaler unscales before the step, as for any optimizer, so clipping works in every precision.
    optimizer._step_supports_amp_scaling = False
    return optimizer


def follow_new_horizon(scheduler, total: int, saved_total: int, schedule: Schedule, warn: bool) -> None:
    """A run resumed with another ``max_steps``: the lr schedule follows the new horizon from the first
    resumed step on (not the old one for a step and then the new one), and says so."""
    step = scheduler.last_epoch
    old_lr = scheduler.get_last_lr()[0]
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
    if warn and schedule != "constant":
        log.warning(
            "resumed at step %d with a schedule over %d steps; the checkpoint's schedule was over %d. "
            "The %s schedule now follows the new horizon: lr %.3g -> %.3g at step %d.",
            step,
            total,
            saved_total,
            schedule,
            old_lr,
            lrs[0],
            step,
        )


def lr_schedule(optimizer, warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float):
    """Lightning's scheduler config: ``lr_factor`` per optimizer step."""
    factor = partial(
        lr_factor,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        schedule=schedule,
        min_lr_ratio=min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": "step"}
