"""Tokenised examples as memory-mapped Arrow columns: an ``Example`` is built only when a batch asks.

Lengths and loss-token counts are int32 columns read once into NumPy (8 bytes per example), so the
batch planner never touches the token columns; ``input_ids``/``labels`` stay in the cache's Arrow
files, shared through the page cache by every process that maps them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from psft_lightning.data.formats import Example


class ExampleTable(Sequence):
    """A read-only sequence of ``Example`` over an Arrow table with ``input_ids``, ``labels``, ``length``
    and ``loss_tokens`` columns; ``rows`` (positions in the table) makes a view without copying."""

    def __init__(self, table: pa.Table, rows: np.ndarray | None = None) -> None:
        self.table = table
        self.rows = np.arange(table.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        self.lengths = table.column("length").to_numpy()[self.rows]
        self.loss_tokens = table.column("loss_tokens").to_numpy()[self.rows]
        chunks = table.column("input_ids").chunks
        self._starts = np.cumsum([0] + [len(chunk) for chunk in chunks])
        self._ids, self._labels = chunks, table.column("labels").chunks

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        row = int(self.rows[i])
        chunk = int(np.searchsorted(self._starts, row, side="right")) - 1
        at = row - int(self._starts[chunk])
        return Example(self._ids[chunk][at].as_py(), self._labels[chunk][at].as_py())

    def __iter__(self) -> Iterator[Example]:
        return (self[i] for i in range(len(self)))

    def select(self, positions) -> ExampleTable:
        """The examples at ``positions`` of this sequence, in that order."""
        return ExampleTable(self.table, self.rows[np.asarray(positions, dtype=np.int64)])

    @classmethod
    def concat(cls, tables: list[pa.Table]) -> ExampleTable:
        return cls(pa.concat_tables(tables))


def lengths_and_loss_tokens(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Per-example token and loss-token counts: from the columns of a table, else counted."""
    if isinstance(examples, ExampleTable):
        return examples.lengths, examples.loss_tokens
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    return lengths, np.array([e.num_loss_tokens for e in examples], dtype=np.int64)
