"""The training batch plan: which examples form each micro-batch of each optimizer step, on each rank.

The plan is a pure function of (seed, epoch, sizes), so every rank knows the loss-token count of the
whole optimizer step up front (across its micro-batches and all ranks) without communication: each
micro-batch carries it as ``step_loss_tokens`` and the loss is divided by it exactly once. Where the
loader resumes is derived from the trainer's optimizer step, so resuming from any checkpoint
continues with the next unseen batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from psft_lightning.data.collate import collate
from psft_lightning.data.formats import Example


@dataclass(frozen=True)
class StepShape:
    micro_batch_size: int
    accumulate: int = 1
    world_size: int = 1

    @property
    def examples_per_step(self) -> int:
        return self.micro_batch_size * self.accumulate * self.world_size


def plan_epoch(num_examples: int, shape: StepShape, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """Example indices of each optimizer step of one epoch; an incomplete last step is dropped."""
    order = list(range(num_examples))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_step = shape.examples_per_step
    return [order[i : i + per_step] for i in range(0, num_examples - per_step + 1, per_step)]


def rank_micro_batches(step: list[int], shape: StepShape, rank: int) -> list[list[int]]:
    """This rank's micro-batches of one step: rank r takes every world_size-th micro-batch."""
    size = shape.micro_batch_size
    micro = [step[i : i + size] for i in range(0, len(step), size)]
    return micro[rank :: shape.world_size]


class StepBatches:
    """Iterable of this rank's training micro-batches, resumable at any optimizer step.

    ``current_step`` returns the trainer's optimizer step when iteration starts; the loader skips
    the micro-batches of the steps already taken (also across epochs), so resume is exact.
    """

    def __init__(
        self,
        examples: list[Example],
        shape: StepShape,
        pad_id: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        current_step: Callable[[], int] = lambda: 0,
    ) -> None:
        if len(examples) < shape.examples_per_step:
            raise ValueError(
                f"{len(examples)} training examples cannot fill one optimizer step of "
                f"{shape.examples_per_step} (micro-batch {shape.micro_batch_size} x accumulate "
                f"{shape.accumulate} x {shape.world_size} ranks); lower data.batch_size or add data."
            )
        self.examples = examples
        self.shape = shape
        self.pad_id = pad_id
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.current_step = current_step
        self.steps_per_epoch = len(examples) // shape.examples_per_step

    def __len__(self) -> int:
        return self.steps_per_epoch * self.shape.accumulate

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, first_step = divmod(self.current_step(), self.steps_per_epoch)
        for step in plan_epoch(len(self.examples), self.shape, self.seed, epoch, self.shuffle)[first_step:]:
            step_loss_tokens = sum(self.examples[i].num_loss_tokens for i in step)
            for indices in rank_micro_batches(step, self.shape, self.rank):
                batch = collate([self.examples[i] for i in indices], self.pad_id)
                batch["step_loss_tokens"] = torch.tensor(float(step_loss_tokens))
                yield batch
