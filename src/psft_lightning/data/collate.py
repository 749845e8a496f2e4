"""Examples -> a micro-batch tensor dict: padded (one example per row), packed (several per row) or
padding-free (all in one row).

Padded: right-pad to the longest example; padding carries label -100 and attention mask 0.
Packed: examples are laid end to end in rows of at most ``pack_length`` tokens, with ``position_ids``
restarting at 0 for each example and no attention mask, so transformers' attention (eager, sdpa,
flex) keeps examples apart (see ``models.check_packed_attention``).
Padding-free (TRL's ``padding_free``): the packed layout with a single row and no padding at all, the
one the flash-attention varlen kernels read (they find examples from ``position_ids`` only in a batch
of one row). Every layout keeps each example's tokens and labels, so loss-token counts are exactly
those of the padded batch.
"""

from __future__ import annotations

import bisect
from typing import Literal

import torch

from psft_lightning.data.formats import IGNORE_INDEX, Example
from psft_lightning.errors import ConfigError

PADDING_FREE = "padding_free"
Packing = bool | Literal["padding_free"]
"""``data.packing``: False (padded), True (packed rows of ``pack_length``) or ``padding_free`` (one row)."""


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; ``labels`` keep -100 on prompts and padding."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "num_input_tokens": attention_mask.sum(),
    }


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into as few bins of total <= ``capacity`` as best-fit decreasing
    finds; deterministic (ties keep the input order). A length above ``capacity`` gets its own bin."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - lengths[i], b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - lengths[i], len(bins) - 1))
    return bins


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows for a packed micro-batch: as few as best-fit decreasing needs, then balanced.

    Rows are padded to the longest one, so with the row count fixed by BFD the examples are spread
    longest-first onto the least-filled row (when that still fits ``capacity``): fewer padded positions.
    """
    bins = best_fit_decreasing(lengths, capacity)
    loads = [0] * len(bins)
    rows: list[list[int]] = [[] for _ in bins]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = loads.index(min(loads))
        rows[r].append(i)
        loads[r] += lengths[i]
    if max(loads) <= max(capacity, max(lengths)) and max(loads) < max(
        sum(lengths[i] for i in b) for b in bins
    ):
        return rows
    return bins


def collate_packed(examples: list[Example], pad_id: int, pack_length: int) -> dict[str, torch.Tensor]:
    """Pack the examples into as few rows of <= ``pack_length`` tokens as possible (no attention mask).

    Rows are right-padded to the longest row; the padding is a segment of its own (positions from 0,
    labels -100), so it attends only to itself. Each example's first label is -100: the last token of
    one example never predicts the first token of the next.
    """
    rows = pack_rows([len(e.input_ids) for e in examples], pack_length)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    real = 0
    for r, row in enumerate(rows):
        at = 0
        for i in sorted(row):
            n = len(examples[i].input_ids)
            input_ids[r, at : at + n] = torch.tensor(examples[i].input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(examples[i].labels[1:])
            position_ids[r, at : at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(width - at)
        real += at
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "num_input_tokens": torch.tensor(real),
    }


def collate_padding_free(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """All examples end to end in one row (no padding, no attention mask): a packed row as long as
    the micro-batch, so it follows ``collate_packed``'s rules exactly."""
    return collate_packed(examples, pad_id, sum(len(e.input_ids) for e in examples))


def collate_for(
    packing: Packing, examples: list[Example], pad_id: int, pack_length: int
) -> dict[str, torch.Tensor]:
    """The micro-batch of ``examples`` in the layout ``packing`` names."""
    if packing == PADDING_FREE:
        return collate_padding_free(examples, pad_id)
    if packing:
        return collate_packed(examples, pad_id, pack_length)
    return collate(examples, pad_id)


def check_packing(packing: Packing, pack_length: int | None, max_length: int) -> None:
    """Refuse a packing setting no layout implements, before any data is read."""
    if packing not in (False, True, PADDING_FREE):
        raise ConfigError(f"data.packing must be true, false or {PADDING_FREE}, got {packing!r}")
    if packing == PADDING_FREE and pack_length is not None:
        raise ConfigError(
            f"data.pack_length ({pack_length}) sets the row length of data.packing: true; "
            f"data.packing: {PADDING_FREE} puts each micro-batch in one row of its own length. "
            "Drop data.pack_length or set data.packing: true."
        )
    if pack_length is not None and pack_length < max_length:
        raise ConfigError(
            f"data.pack_length ({pack_length}) must be >= data.max_length ({max_length}) so every "
            "example fits in a packed row"
        )
