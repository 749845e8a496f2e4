"""The micro-batch a step runs on, typed: the one place that knows which positions carry a loss.

Collation and the loaders keep plain tensor dicts (what Lightning moves between devices and what a
user's own data module yields); whoever reads a batch takes ``Batch.of(batch)`` and asks it for its
loss positions, so the step, pi_old, the probes and ``ClippedTokens`` line up by construction: token
``i`` of every per-token tensor is the ``i``-th True of ``loss_mask`` in row-major order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from psft_lightning.data.formats import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


@dataclass
class Batch:
    """One micro-batch: ``labels`` are -100 (``IGNORE_INDEX``) on prompts and padding.

    ``num_input_tokens`` counts real (non-padding) input tokens, for tokens/s; ``step_loss_tokens`` is
    the loss-token count of the whole optimizer step (all micro-batches and ranks), when the data
    module knows it (``PSFTDataModule`` does), so the loss is divided by it exactly once.

    A sequence-parallel slice (``SequenceParallel.shard``) also carries ``shifted_labels``, the next-token
    targets of its own positions, shifted before the rows were sliced, and the ``sequence_parallel``
    layout its attention needs.
    """

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor | None = None
    position_ids: Tensor | None = None
    num_input_tokens: Tensor | None = None
    step_loss_tokens: Tensor | None = None
    shifted_labels: Tensor | None = None
    sequence_parallel: Any = None  # sequence_parallel.SequenceLayout

    @classmethod
    def of(cls, batch: Batch | Mapping[str, Tensor]) -> Batch:
        """``batch`` typed; a dict's keys outside the fields (a user's extras) are left out."""
        if isinstance(batch, Batch):
            return batch
        return cls(**{f.name: batch[f.name] for f in fields(cls) if f.name in batch})

    @cached_property
    def targets(self) -> Tensor:
        """The next-token target of every position but the last: ``labels`` shifted by one (of every
        position of a sequence-parallel slice, whose last one predicts the next slice's first)."""
        return self.labels[:, 1:] if self.shifted_labels is None else self.shifted_labels

    def predicting(self, per_position: Tensor) -> Tensor:
        """``per_position [rows, length, ...]`` at the positions that have a target (lined up with
        ``targets``): all but the last, or all of a sequence-parallel slice."""
        return per_position[:, :-1] if self.shifted_labels is None else per_position

    @cached_property
    def loss_mask(self) -> Tensor:
        """Which of ``targets`` carry a loss (the loss positions), ``[rows, length - 1]``."""
        return self.targets != IGNORE_INDEX

    @property
    def loss_targets(self) -> Tensor:
        """The target ids at the loss positions, flat, in the order of every per-token tensor."""
        return self.targets[self.loss_mask]

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def loss_tokens_per_row(self) -> list[int]:
        """How many of the flat loss tokens each row holds (one example per row when padded)."""
        return self.loss_mask.sum(1).tolist()

    def model_inputs(self) -> dict[str, Tensor]:
        """The keyword arguments of the model's forward (a slice's layout reaches its attention)."""
        inputs = {name: getattr(self, name) for name in MODEL_INPUTS if getattr(self, name) is not None}
        if self.sequence_parallel is not None:
            inputs["sequence_parallel"] = self.sequence_parallel
        return inputs

    def input_tokens(self) -> Tensor:
        """Real (non-padding) input tokens, for tokens/s."""
        if self.num_input_tokens is not None:
            return self.num_input_tokens.float()
        if self.attention_mask is not None:
            return self.attention_mask.sum().float()
        return torch.tensor(float(self.input_ids.numel()))
