"""One source's rows -> tokenised examples in Arrow, with ``datasets.map`` over ``num_proc`` processes.

Rows are read in this process by ``sources.read_rows`` (so file-level checks, line numbers and their
order are those of a sequential read) and handed to the workers pickled, with their location; each
worker runs the same ``row_to_example`` and ``fit_length`` as a Python loop would, so the tokens are
identical. Per row it records what ``max_length`` did, and the skip and truncation reports are rebuilt
from those columns in row order. With several processes, a row-level error is the first one its
worker met, which need not be the first in the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from psft_lightning.data.formats import Fields, row_to_example
from psft_lightning.data.lengths import Overlong, OverlongReport, SkipReport, fit_length, loses_final_eos
from psft_lightning.data.sources import read_rows

# Below this many rows a second process costs more than it saves (start-up, pickling the tokenizer).
ROWS_PER_PROCESS = 500
COLUMNS = ("input_ids", "labels", "length", "loss_tokens")


@dataclass(frozen=True)
class TokenSettings:
    """Everything besides the rows and the tokenizer that decides an example's tokens."""

    format: str
    fields: Fields
    use_chat_template: bool
    max_length: int
    overlong: Overlong


def default_num_proc(rows: int) -> int:
    """One process per usable CPU, but none that would get fewer than ``ROWS_PER_PROCESS`` rows."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, rows // ROWS_PER_PROCESS))


def _processes(num_proc: int | None, rows: int) -> int | None:
    """``map``'s num_proc: None for one process, so the map runs here rather than in a pool of one."""
    n = num_proc or default_num_proc(rows)
    return n if n > 1 else None


def _schema() -> pa.Schema:
    ids = pa.list_(pa.int32())
    int32 = pa.int32()
    return pa.schema(
        [
            ("input_ids", ids),
            ("labels", ids),
            ("length", int32),
            ("loss_tokens", int32),
            ("full_length", int32),
            ("skip", pa.string()),
            ("lost_eos", pa.bool_()),
            ("where", pa.string()),
        ]
    )


def _tokenise_batch(batch: pa.Table, tokenizer, settings: TokenSettings) -> pa.Table:
    """Tokenise a batch of pickled rows; the result is an Arrow table, so ``datasets`` stores it as it
    is (no per-element encoding of the token lists in Python)."""
    out: dict[str, list] = {name: [] for name in _schema().names}
    rows, wheres = batch.column("row").to_pylist(), batch.column("where").to_pylist()
    for blob, where in zip(rows, wheres, strict=True):
        example = row_to_example(
            pickle.loads(blob), tokenizer, settings.format, settings.fields, settings.use_chat_template, where
        )
        fitted, reason = fit_length(example, settings.max_length, settings.overlong, where)
        out["input_ids"].append(fitted.input_ids if fitted else [])
        out["labels"].append(fitted.labels if fitted else [])
        out["length"].append(len(fitted.input_ids) if fitted else 0)
        out["loss_tokens"].append(fitted.num_loss_tokens if fitted else 0)
        out["full_length"].append(len(example.input_ids))
        out["skip"].append(reason)
        out["lost_eos"].append(
            fitted is not example and loses_final_eos(example, settings.max_length, tokenizer.eos_token_id)
        )
        out["where"].append(where)
    return pa.table(out, schema=_schema())


@contextlib.contextmanager
def _default_sigterm(processes: int | None) -> Iterator[None]:
    """Map workers are forked with SIGTERM's default action. ``datasets`` ends its pool with SIGTERM
    when a worker fails; a run's own handler (checkpoint, then stop), inherited by a fork, would let a
    worker outlive that and keep the pool's join, and the run, waiting forever."""
    if not processes or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No ``datasets`` progress bars: the run's own log says what was tokenised and how long it took."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def tokenise(
    path: str, split: str, tokenizer, settings: TokenSettings, num_proc: int | None, workdir: str
) -> tuple[object, SkipReport, OverlongReport]:
    """The kept examples of ``path`` as a ``datasets.Dataset`` (columns ``COLUMNS``), and the reports.

    ``workdir`` holds the map's Arrow files; the caller saves the result and removes it.
    """
    import datasets

    os.makedirs(workdir, exist_ok=True)
    blobs, wheres = [], []
    for row, where in read_rows(path, split):
        blobs.append(pickle.dumps(row))
        wheres.append(where)
    processes = _processes(num_proc, len(blobs))
    with _quiet(), _default_sigterm(processes):
        rows = datasets.Dataset.from_dict({"row": blobs, "where": wheres}).with_format("arrow")
        del blobs
        mapped = rows.map(
            _tokenise_batch,
            batched=True,
            batch_size=64,
            num_proc=processes,
            fn_kwargs={"tokenizer": tokenizer, "settings": settings},
            remove_columns=["row"],
            cache_file_name=os.path.join(workdir, "map.arrow"),
            new_fingerprint="psft-tokenise",
        )
    mapped = mapped.with_format(None)  # Python rows again, for the reports
    skips, overlong = _reports(mapped, settings.max_length)
    kept = [i for i, reason in enumerate(mapped.data.column("skip").to_pylist()) if not reason]
    return mapped.select(kept).select_columns(list(COLUMNS)), skips, overlong


def _reports(mapped, max_length: int) -> tuple[SkipReport, OverlongReport]:
    """What ``max_length`` cut or dropped, in row order, as the sequential loop counted it."""
    skips, overlong = SkipReport(), OverlongReport()
    over = np.flatnonzero(mapped.data.column("full_length").to_numpy() > max_length)
    for row in mapped.select_columns(["full_length", "skip", "lost_eos", "where"]).select(over):
        overlong.add(row["full_length"], row["where"], not row["skip"], row["lost_eos"])
        if row["skip"]:
            skips.add(row["skip"], row["where"])
    return skips, overlong
