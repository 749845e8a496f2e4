"""The step plan: coverage per epoch, disjoint ranks, exact step loss-token counts, exact resume."""

from __future__ import annotations

import pytest
import torch

from psft_lightning.data.batching import StepBatches, StepShape, plan_epoch, rank_micro_batches
from psft_lightning.data.formats import IGNORE_INDEX, Example

PAD = 0


def make_examples(n: int) -> list[Example]:
    """Example i has i + 2 tokens, i + 1 of them loss tokens, and starts with token id 1000 + i."""
    return [Example([1000 + i] + [7] * (i + 1), [IGNORE_INDEX] + [7] * (i + 1)) for i in range(n)]


def ids(batch) -> list[int]:
    return [int(row[0]) - 1000 for row in batch["input_ids"]]


@pytest.mark.parametrize("shape", [StepShape(2, 3, 2), StepShape(4, 1, 1), StepShape(1, 2, 3)])
@pytest.mark.parametrize("epoch", [0, 1])
def test_plan_covers_each_example_once_and_ranks_are_disjoint(shape, epoch):
    n = 29  # not a multiple of any step size: the incomplete last step is dropped
    steps = plan_epoch(n, shape, seed=3, epoch=epoch, shuffle=True)
    per_step = shape.examples_per_step
    assert len(steps) == n // per_step and all(len(s) == per_step for s in steps)
    flat = [i for s in steps for i in s]
    assert len(set(flat)) == len(flat) == (n // per_step) * per_step
    for step in steps:
        by_rank = [rank_micro_batches(step, shape, r) for r in range(shape.world_size)]
        for micro in by_rank:
            assert len(micro) == shape.accumulate and all(len(m) == shape.micro_batch_size for m in micro)
        seen = [i for micro in by_rank for m in micro for i in m]
        assert sorted(seen) == sorted(step)  # ranks disjoint, together the whole step


def test_plan_is_seeded_per_epoch_and_unshuffled_in_order():
    shape = StepShape(2, 2)
    assert plan_epoch(16, shape, 0, 0, True) == plan_epoch(16, shape, 0, 0, True)
    assert plan_epoch(16, shape, 0, 0, True) != plan_epoch(16, shape, 0, 1, True)
    assert plan_epoch(16, shape, 0, 0, True) != plan_epoch(16, shape, 1, 0, True)
    assert plan_epoch(10, shape, 0, 0, False) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_step_loss_tokens_is_the_count_of_the_whole_step_across_micro_batches_and_ranks():
    examples = make_examples(27)
    shape = StepShape(micro_batch_size=2, accumulate=2, world_size=2)
    ranks = [list(StepBatches(examples, shape, PAD, seed=5, rank=r)) for r in range(2)]
    assert [len(r) for r in ranks] == [6, 6]  # 3 steps x 2 micro-batches per rank
    for step in range(3):
        micro = [b for r in ranks for b in r[2 * step : 2 * step + 2]]
        members = [i for b in micro for i in ids(b)]
        assert len(set(members)) == 8
        exact = sum(i + 1 for i in members)  # by construction of make_examples
        assert exact == sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro)
        for b in micro:
            assert b["step_loss_tokens"].item() == exact
    # a step's token count differs between steps, so a per-micro-batch count would not pass this
    counts = {ranks[0][2 * s]["step_loss_tokens"].item() for s in range(3)}
    assert len(counts) == 3


def test_micro_batch_padding_and_length():
    examples = make_examples(4)
    loader = StepBatches(examples, StepShape(4), PAD, shuffle=False)
    assert len(loader) == 1
    (batch,) = list(loader)
    assert batch["input_ids"].shape == (4, 5)
    assert batch["attention_mask"].sum(1).tolist() == [2, 3, 4, 5]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == PAD).all()


def run_from(examples, shape, start: int, total_steps: int, rank: int = 0) -> list[list[int]]:
    """The micro-batches a trainer sees from optimizer step ``start`` to ``total_steps``: one
    iteration per epoch, each starting where ``current_step`` says (as the trainer's loop does)."""
    step = start
    seen: list[list[int]] = []
    while step < total_steps:
        loader = StepBatches(examples, shape, PAD, seed=1, rank=rank, current_step=lambda s=step: s)
        for k, batch in enumerate(loader):
            seen.append(ids(batch) + [batch["step_loss_tokens"].item()])
            if (k + 1) % shape.accumulate == 0:
                step += 1
                if step == total_steps:
                    break
    return seen


@pytest.mark.parametrize("resume_at", [1, 2, 3, 4, 6])
def test_resume_at_step_k_continues_exactly_also_across_epochs(resume_at):
    examples = make_examples(11)
    shape = StepShape(micro_batch_size=2, accumulate=2)  # 2 steps per epoch, 3 examples left out
    assert StepBatches(examples, shape, PAD).steps_per_epoch == 2
    uninterrupted = run_from(examples, shape, 0, 7)
    assert len(uninterrupted) == 14
    assert run_from(examples, shape, resume_at, 7) == uninterrupted[2 * resume_at :]
    # epochs differ in order, so the resumed epoch is really the right one
    assert uninterrupted[:4] != uninterrupted[4:8]


def test_collate_keeps_dtypes():
    (batch,) = list(StepBatches(make_examples(2), StepShape(2), PAD))
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["step_loss_tokens"].dtype == torch.float32
