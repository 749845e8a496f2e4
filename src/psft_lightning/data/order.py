"""What decides the training data order, recorded in every checkpoint so a resume can check it.

The batch plan (``batching.plan_epoch``) is a pure function of the tokenised examples, the step shape
(micro-batch, accumulation, ranks), the seed and the packing/bucketing settings; the data position of
a resume follows from the optimizer step. Were any of them different, the resumed run would see other
batches than a run that was never stopped: that is refused, or allowed with a warning by
``data.allow_inexact_resume``.
"""

from __future__ import annotations

import logging
from typing import Any

from psft_lightning.data.batching import StepShape
from psft_lightning.errors import ConfigError

log = logging.getLogger(__name__)

ORDER_KEY = "data_order"


def order_record(
    train_keys: list[list[str]],
    shape: StepShape,
    seed: int,
    shuffle: bool,
    val_fraction: float | None,
    layout: dict[str, Any],
) -> dict[str, Any]:
    """The data order of a run: its training files with their cache keys, the step shape, the seed and
    shuffling, the share held out of the train files (None with separate validation files) and the
    layout (max length, packing, bucketing)."""
    return {
        "train_files": train_keys,
        "batch_size": shape.micro_batch_size,
        "accumulate_grad_batches": shape.accumulate,
        "world_size": shape.world_size,
        "seed": seed,
        "shuffle": shuffle,
        "val_fraction": val_fraction,
        **layout,
    }


def check_same_order(saved: dict[str, Any], current: dict[str, Any], allow: bool) -> None:
    """Refuse (or, with ``allow``, warn about) a resume whose data order differs from the checkpoint's."""
    changed = [
        f"{key}: checkpoint {saved[key]!r}, this run {current.get(key)!r}"
        for key in saved
        if key != "train_files" and saved[key] != current.get(key)
    ]
    changed += _file_changes(saved.get("train_files", []), current.get("train_files", []))
    if not changed:
        return
    what = "; ".join(changed)
    if allow:
        log.warning("resuming with another data order (%s): the data position is not exact", what)
        return
    raise ConfigError(
        f"Cannot resume exactly: what decides the training data order changed since the checkpoint ({what}). "
        "Resume with the checkpoint's settings and data, or set data.allow_inexact_resume: true to "
        "continue from its step with the new order."
    )


def _file_changes(saved: list[list[str]], current: list[list[str]]) -> list[str]:
    """Changed training files: another list of files, or the same file with other contents/tokens."""
    if [key for _, key in saved] == [key for _, key in current]:
        return []  # the same examples, however the paths are spelled
    if [path for path, _ in saved] != [path for path, _ in current]:
        return [f"data.train_files: checkpoint {[p for p, _ in saved]}, this run {[p for p, _ in current]}"]
    return [
        f"data.train_files: {path} has other contents or tokenisation (cache key {old} -> {new})"
        for (path, old), (_, new) in zip(saved, current, strict=True)
        if old != new
    ]
