"""The tokenisation cache: one directory of Arrow files per source, keyed by what decides its tokens.

The key hashes the source (the bytes of a file or of every file of a saved dataset, or a hub dataset's
fingerprint), its path and split, the tokenizer (vocabulary, merges, normaliser, special tokens and
chat template), the settings of ``TokenSettings`` and the versions of psft-lightning and ``datasets``;
changing any of them makes a new entry. An entry is written to a temporary directory and renamed into
place, so a reader never sees half of one and two builders cannot clash (the second discards its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import pyarrow as pa

from psft_lightning.data.hub import is_hub, load_hub, parse_hub
from psft_lightning.data.lengths import OverlongReport, SkipReport
from psft_lightning.data.tokenise import TokenSettings, tokenise

log = logging.getLogger(__name__)

LAYOUT = 1  # bump when the stored columns or the tokenisation code change the tokens
ENV = "PSFT_DATA_CACHE"
EXAMPLES = "examples.arrow"


def default_cache_dir() -> str:
    """``$PSFT_DATA_CACHE``, else ``$XDG_CACHE_HOME/psft_lightning/data`` (``~/.cache/...``)."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "psft_lightning", "data")


def _hash_file(digest, path: str) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)


def source_fingerprint(path: str, split: str) -> str:
    """What identifies the rows of ``path`` (and, for saved and hub datasets, of ``split``)."""
    if is_hub(path):
        spec = parse_hub(path, split)
        return f"{spec}:{load_hub(spec)._fingerprint}"
    digest = hashlib.sha256(os.path.abspath(path).encode())
    if os.path.isdir(path):
        digest.update(split.encode())
        for folder, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                digest.update(os.path.relpath(os.path.join(folder, name), path).encode())
                _hash_file(digest, os.path.join(folder, name))
    elif os.path.isfile(path):
        _hash_file(digest, path)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's whole definition: a change of vocabulary, merges or template changes it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [
        type(tokenizer).__name__,
        backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())),
        json.dumps(getattr(tokenizer, "chat_template", None), sort_keys=True),
        repr(sorted(tokenizer.special_tokens_map.items())),
        repr((tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_key(source: str, tokenizer: str, settings: TokenSettings) -> str:
    from psft_lightning import __version__

    fields = {
        "source": source,
        "tokenizer": tokenizer,
        "settings": dataclasses.asdict(settings),
        # the installed version, without importing datasets: a cached start never needs it
        "versions": [LAYOUT, __version__, importlib.metadata.version("datasets")],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Entry:
    """One source's tokenised examples as a memory-mapped table, with its reports."""

    directory: str
    table: pa.Table
    skips: SkipReport
    overlong: OverlongReport
    built: bool  # tokenised by this call, rather than mapped from the cache


def _write_arrow(examples, path: str) -> None:
    """The examples as one Arrow IPC file, written in record batches (never all in memory)."""
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, examples.features.arrow_schema) as writer:
        for batch in examples.with_format("arrow").iter(batch_size=1000):
            writer.write_table(batch)


def _load(directory: str, built: bool) -> Entry:
    with open(os.path.join(directory, "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    table = pa.ipc.open_file(pa.memory_map(os.path.join(directory, EXAMPLES))).read_all()
    return Entry(directory, table, SkipReport(**report["skips"]), OverlongReport(**report["overlong"]), built)


def cached_examples(
    path: str, split: str, tokenizer, settings: TokenSettings, cache_dir: str, num_proc: int | None
) -> Entry:
    """The entry of ``path`` in ``cache_dir``: mapped if present, else tokenised now and stored."""
    key = cache_key(source_fingerprint(path, split), tokenizer_fingerprint(tokenizer), settings)
    directory = os.path.join(cache_dir, key)
    if os.path.isfile(os.path.join(directory, "report.json")):
        return _load(directory, built=False)
    os.makedirs(cache_dir, exist_ok=True)
    building = tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir)
    try:
        started = time.perf_counter()
        examples, skips, overlong = tokenise(
            path, split, tokenizer, settings, num_proc, os.path.join(building, "work")
        )
        _write_arrow(examples, os.path.join(building, EXAMPLES))
        report = {"skips": dataclasses.asdict(skips), "overlong": dataclasses.asdict(overlong)}
        with open(os.path.join(building, "report.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle)
        shutil.rmtree(os.path.join(building, "work"))
        try:
            os.rename(building, directory)
        except OSError:  # another process stored the same entry first
            return _load(directory, built=False)
        log.info(
            "%s data: tokenised %s (%d examples) in %.1f s into %s",
            split,
            path,
            len(examples),
            time.perf_counter() - started,
            directory,
        )
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return _load(directory, built=True)
