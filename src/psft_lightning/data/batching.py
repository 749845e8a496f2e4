"""The training batch plan: which examples form each micro-batch of each optimizer step, on each rank.

The plan is a pure function of (seed, epoch, sizes), so every rank knows the loss-token count of the
whole optimizer step up front (across its micro-batches and all ranks) without communication: each
micro-batch carries it as ``step_loss_tokens`` and the loss is divided by it exactly once. Where the
loader resumes is derived from the trainer's optimizer step, so resuming from any checkpoint
continues with the next unseen batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from psft_lightning.data.collate import Packing, collate_for
from psft_lightning.data.formats import Example
from psft_lightning.data.table import lengths_and_loss_tokens
from psft_lightning.errors import ConfigError, DataError

BUCKET_WINDOW_STEPS = 32


@dataclass(frozen=True)
class StepShape:
    micro_batch_size: int
    accumulate: int = 1
    world_size: int = 1

    @property
    def examples_per_step(self) -> int:
        return self.micro_batch_size * self.accumulate * self.world_size


def check_step_fits(num_examples: int, shape: StepShape, where: str = "") -> None:
    """At least one whole optimizer step of examples (an incomplete last step is dropped)."""
    if num_examples < shape.examples_per_step:
        raise DataError(
            f"{where}{num_examples} training examples cannot fill one optimizer step of "
            f"{shape.examples_per_step} (micro-batch {shape.micro_batch_size} x accumulate "
            f"{shape.accumulate} x {shape.world_size} ranks); lower data.batch_size or add data."
        )


def check_val_interval(num_examples: int, shape: StepShape, val_check_interval, every_n_epochs) -> None:
    """Lightning counts an integer ``val_check_interval`` in micro-batches *within* an epoch unless
    ``check_val_every_n_epoch`` is null, and fails only once training starts: check it up front."""
    batches = num_examples // shape.examples_per_step * shape.accumulate
    if isinstance(val_check_interval, int) and every_n_epochs is not None and val_check_interval > batches:
        raise ConfigError(
            f"trainer.val_check_interval={val_check_interval} is more than the {batches} training "
            f"micro-batches of one epoch ({num_examples} examples, {shape.examples_per_step} per optimizer "
            f"step). Set trainer.check_val_every_n_epoch: null to count the interval across epochs (as the "
            f"shipped configs do), or lower trainer.val_check_interval to at most {batches}."
        )


def plan_epoch(
    num_examples: int,
    shape: StepShape,
    seed: int,
    epoch: int,
    shuffle: bool,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Example indices of each optimizer step of one epoch; an incomplete last step is dropped.

    With ``lengths`` (bucketing), each window of ``BUCKET_WINDOW_STEPS`` steps of the shuffled order
    is sorted by length before it is cut into steps, and the steps are shuffled again: micro-batches
    hold examples of similar length (little padding) while the step order stays random.
    """
    order = list(range(num_examples))
    rng = random.Random(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    per_step = shape.examples_per_step
    usable = num_examples - num_examples % per_step
    if lengths is not None:
        window = per_step * BUCKET_WINDOW_STEPS
        order = [
            i
            for start in range(0, usable, window)
            for i in sorted(order[start : min(start + window, usable)], key=lengths.__getitem__)
        ]
    steps = [order[i : i + per_step] for i in range(0, usable, per_step)]
    if lengths is not None and shuffle:
        rng.shuffle(steps)
    return steps


def rank_micro_batches(step: list[int], shape: StepShape, rank: int) -> list[list[int]]:
    """This rank's micro-batches of one step: rank r takes every world_size-th micro-batch."""
    size = shape.micro_batch_size
    micro = [step[i : i + size] for i in range(0, len(step), size)]
    return micro[rank :: shape.world_size]


class StepBatches:
    """Iterable of this rank's training micro-batches, resumable at any optimizer step.

    ``current_step`` returns the trainer's optimizer step when iteration starts; the loader skips
    the micro-batches of the steps already taken (also across epochs), so resume is exact.
    ``packing`` lays each micro-batch's examples end to end in rows of <= ``pack_length`` tokens, or
    (``padding_free``) in one row (the micro-batch keeps its examples, so ``step_loss_tokens`` and
    resume do not change);
    ``bucketing`` puts examples of similar length in the same micro-batch (see ``plan_epoch``).
    Lengths and loss-token counts come from an ``ExampleTable``'s columns; examples are read only
    when their micro-batch is collated.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        shape: StepShape,
        pad_id: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        current_step: Callable[[], int] = lambda: 0,
        packing: Packing = False,
        pack_length: int | None = None,
        bucketing: bool = False,
    ) -> None:
        check_step_fits(len(examples), shape)
        self.examples = examples
        self.shape = shape
        self.pad_id = pad_id
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.current_step = current_step
        self.packing = packing
        lengths, self.loss_tokens = lengths_and_loss_tokens(examples)
        self.pack_length = pack_length or int(lengths.max())
        self.lengths = lengths if bucketing else None
        self.steps_per_epoch = len(examples) // shape.examples_per_step
        self._plans: dict[int, list[list[int]]] = {}

    def __len__(self) -> int:
        return self.steps_per_epoch * self.shape.accumulate

    def plan(self, epoch: int) -> list[list[int]]:
        """The optimizer steps of ``epoch`` (cached: the lookahead old policy asks for them again)."""
        if epoch not in self._plans:
            self._plans = {
                epoch: plan_epoch(
                    len(self.examples), self.shape, self.seed, epoch, self.shuffle, self.lengths
                )
            }
        return self._plans[epoch]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate_for(self.packing, [self.examples[i] for i in indices], self.pad_id, self.pack_length)

    def step_micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of optimizer step ``step`` (counted across epochs), as the loader
        yields them; a pure function of the plan, so it can be called ahead of the loader."""
        epoch, index = divmod(step, self.steps_per_epoch)
        indices = self.plan(epoch)[index]
        step_loss_tokens = torch.tensor(float(self.loss_tokens[indices].sum(dtype=np.int64)))
        batches = []
        for micro in rank_micro_batches(indices, self.shape, self.rank):
            batch = self.collate(micro)
            batch["step_loss_tokens"] = step_loss_tokens.clone()
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, first_step = divmod(self.current_step(), self.steps_per_epoch)
        for index in range(first_step, self.steps_per_epoch):
            yield from self.step_micro_batches(epoch * self.steps_per_epoch + index)


def data_parallel(trainer) -> tuple[int, int]:
    """(rank, count) among the processes that get different batches: the ranks of a sequence-parallel
    group share theirs (``FSDP2Strategy(sequence_parallel_size=k)``), so there are world/k of them."""
    if trainer is None:
        return 0, 1
    if getattr(trainer.strategy, "sequence_parallel_size", 1) > 1:
        kwargs = trainer.strategy.distributed_sampler_kwargs
        return kwargs["rank"], kwargs["num_replicas"]
    return trainer.global_rank, trainer.world_size
