"""Dataset files -> rows, each with a location (``file:line`` or ``file row i``) for error messages.

JSON Lines is parsed here line by line so a malformed line is reported by number; Parquet files and
saved Hugging Face datasets are read through ``datasets``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from psft_lightning.errors import DataError

Row = tuple[dict[str, Any], str]


def _json_rows(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as handle:  # -sig: a leading byte-order mark is not JSON
        text = handle.read()
    stripped = text.lstrip()
    if path.endswith(".json") and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from err
        for i, row in enumerate(rows):
            yield row, f"{path} row {i}"
        return
    if path.endswith(".json") and stripped.startswith("{") and "\n" in stripped.rstrip():
        _refuse_single_object(path, text)
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 etc., which JSON strings
    # may hold unescaped. Universal newlines already turned "\r\n" and "\r" into "\n".
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
    for i, row in enumerate(dataset):
        yield row, f"{name} row {i}"


def read_rows(path: str, split: str = "train") -> Iterator[Row]:
    """Rows of a ``.jsonl``/``.json``/``.parquet`` file or a ``save_to_disk`` directory."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        import datasets

        try:
            loaded = datasets.load_from_disk(path)
        except FileNotFoundError as err:
            raise DataError(f"{path}: not a dataset saved with datasets' save_to_disk ({err})") from err
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split {split!r} in the saved dataset (has {list(loaded)})")
            loaded = loaded[split]
        yield from _dataset_rows(loaded, f"{path}[{split}]")
    elif path.endswith((".jsonl", ".json")):
        yield from _json_rows(path)
    elif path.endswith(".parquet"):
        import datasets

        try:
            loaded = datasets.Dataset.from_parquet(path)
        except Exception as err:
            raise DataError(f"{path}: cannot read as Parquet: {err}") from err
        yield from _dataset_rows(loaded, path)
    else:
        raise DataError(
            f"{path}: unsupported file type; use .jsonl, .json, .parquet or a saved dataset directory"
        )
