"""Dataset files -> rows, each with a location (``file:line`` or ``file row i``) for error messages.

JSON Lines is parsed here line by line so a malformed line is reported by number; Parquet files,
saved Hugging Face datasets and hub datasets (``hub:org/name``, see ``hub.py``) are read through
``datasets``.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from typing import Any

from psft_lightning.data.hub import is_hub, load_hub, parse_hub
from psft_lightning.errors import DataError
from psft_lightning.paths import why_missing

Row = tuple[dict[str, Any], str]


GZIP_MAGIC = b"\x1f\x8b"


def _decode(path: str, data: bytes) -> str:
    """UTF-8 text of a JSON file with "\n" line ends; a bad byte is reported by line and column."""
    data = data.removeprefix(codecs.BOM_UTF8)  # a leading byte-order mark is not JSON
    if data.startswith(GZIP_MAGIC):
        raise DataError(
            f"{path} is gzip-compressed, not JSON text: decompress it first (gunzip -c {path} > "
            f"{os.path.basename(path).removesuffix('.gz')}.plain)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        name = os.path.basename(path)
        at = err.start  # everything before it decoded
        lineno = _newlines(data[:at].decode("utf-8")).count("\n") + 1
        line_start = max(data.rfind(b"\n", 0, at), data.rfind(b"\r", 0, at)) + 1
        column = len(data[line_start:at].decode("utf-8")) + 1
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{data[at]:02x} at column {column}: "
            f"{err.reason}). JSON files must be UTF-8; if this one is Latin-1, convert it with "
            f"`iconv -f latin1 -t utf-8 {name} > utf8-{name}`"
        ) from err
    return _newlines(text)


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _json_rows(path: str) -> Iterator[Row]:
    with open(path, "rb") as handle:
        text = _decode(path, handle.read())
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: the file is empty{' (whitespace only)' if text else ''}; it holds no rows")
    if path.endswith(".json") and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from err
        if not rows:
            raise DataError(f"{path}: holds an empty JSON array; it has no rows")
        for i, row in enumerate(rows):
            yield row, f"{path} row {i}"
        return
    if path.endswith(".json") and stripped.startswith("{") and "\n" in stripped.rstrip():
        _refuse_single_object(path, text)
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 etc., which JSON strings
    # may hold unescaped. _decode already turned "\r\n" and "\r" into "\n".
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{lineno}: malformed JSON line ({err.msg} at column {err.colno}): {line[:80]!r}"
            ) from err
        yield row, f"{path}:{lineno}"


def _refuse_single_object(path: str, text: str) -> None:
    """A pretty-printed JSON object is neither an array of rows nor JSON Lines: say so, not 'line 1'."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return  # not one object: JSON Lines parsing reports the first bad line
    if isinstance(whole, dict):
        raise DataError(
            f"{path}: holds one JSON object spanning several lines (keys {sorted(whole)[:8]}), not rows. "
            "Use a JSON array of row objects, or JSON Lines (.jsonl, one row object per line); if the "
            "rows sit under one key, save that list on its own."
        )


def _dataset_rows(dataset, name: str) -> Iterator[Row]:
    if len(dataset) == 0:
        raise _empty_dataset(name, dataset.column_names)
    rows = iter(dataset)
    for i in range(len(dataset)):
        try:
            row = next(rows)
        except UnicodeDecodeError as err:  # Arrow keeps string columns' bytes; decoding happens here
            bad = ", ".join(f"field {column!r}" for column in _undecodable_columns(dataset, i))
            raise DataError(
                f"{name} row {i}: {bad or 'a string column'} is not valid UTF-8 ({err.reason}); "
                "rewrite the column as UTF-8 text"
            ) from err
        yield row, f"{name} row {i}"


def _empty_dataset(name: str, columns: list[str]) -> DataError:
    return DataError(f"{name}: the dataset is empty (0 rows; columns: {columns})")


def _undecodable_columns(dataset, i: int) -> list[str]:
    """The columns of row ``i`` whose bytes are not UTF-8."""
    row = dataset.with_format("arrow")[i]
    bad = []
    for column in row.column_names:
        try:
            row.column(column).to_pylist()
        except UnicodeDecodeError:
            bad.append(column)
    return bad


def _load_saved(path: str):
    import datasets

    try:
        return datasets.load_from_disk(path)
    except FileNotFoundError as err:
        raise DataError(f"{path}: not a dataset saved with datasets' save_to_disk ({err})") from err
    except Exception as err:  # datasets fails on a saved split without rows with an IndexError
        empty = _empty_saved_parts(path)
        if empty:
            raise DataError(f"{path}: the saved dataset is empty (0 rows in {', '.join(empty)})") from err
        raise DataError(f"{path}: cannot load the saved dataset ({type(err).__name__}: {err})") from err


def _empty_saved_parts(path: str) -> list[str]:
    """The parts of a saved dataset (itself, or its split directories) that hold no data files."""
    empty = []
    for part in [".", *sorted(os.listdir(path))]:
        state = os.path.join(path, part, "state.json")
        try:
            with open(state, encoding="utf-8") as handle:
                files = json.load(handle).get("_data_files", [None])
        except (OSError, ValueError, AttributeError):  # no such part, or not a datasets state file
            continue
        if not files:
            empty.append("the dataset" if part == "." else f"split {part!r}")
    return empty


def read_rows(path: str, split: str = "train") -> Iterator[Row]:
    """Rows of a ``.jsonl``/``.json``/``.parquet`` file, a ``save_to_disk`` directory or ``hub:`` dataset."""
    if is_hub(path):
        spec = parse_hub(path, split)
        yield from _dataset_rows(load_hub(spec), spec.label)
        return
    if not os.path.exists(path):
        raise DataError(f"{path}: {why_missing(path)}")
    if os.path.isdir(path):
        import datasets

        loaded = _load_saved(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split {split!r} in the saved dataset (has {list(loaded)})")
            loaded = loaded[split]
        yield from _dataset_rows(loaded, f"{path}[{split}]")
    elif path.endswith((".jsonl", ".json")):
        yield from _json_rows(path)
    elif path.endswith(".parquet"):
        import datasets
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(path)
            loaded = datasets.Dataset.from_parquet(path) if metadata.num_rows else None
        except Exception as err:
            raise DataError(f"{path}: cannot read as Parquet: {err}") from err
        if loaded is None:  # datasets refuses a file without rows with a message about splits
            raise _empty_dataset(path, metadata.schema.names)
        yield from _dataset_rows(loaded, path)
    else:
        raise DataError(
            f"{path}: unsupported file type; use .jsonl, .json, .parquet or a saved dataset directory"
        )
