"""The ``data`` case of scripts/benchmark.py: today's per-row Python loop vs the cached Arrow path.

The set is synthetic prompt/completion rows of 200-1,800 SmolLM2 tokens (chat template included),
generated once under /tmp. Each measurement runs in a fresh interpreter with the libraries imported
and the tokenizer loaded first (both paths need them; the tokenizer's load time is reported apart):

- ``loop``:   ``read_rows`` + ``row_to_example`` + ``fit_length`` per row, each example kept as two
  Python lists: the data module's path before the Arrow cache;
- ``build``:  ``PSFTDataModule.setup()`` on an empty cache with ``num_proc`` processes (read, tokenise,
  store, map), then the first training batch;
- ``cached``: a second start on the warm cache: from constructing the data module to the first batch.

Memory is the growth of the resident set over the measurement, per token of the set.

    python scripts/benchmark.py --data-case 16000000     # the `data` entry of docs/benchmarks.json
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKENIZER = "smollm2-135m-instruct"
MAX_LENGTH = 2048  # longer than every row: nothing is cut, both paths keep every token
WORDS = (
    "the a of and to in is that for it as with was on be by this are from at or an have not which "
    "but they has one were all their more can there also step answer number total each then so we "
    "add take left right first second third sum product apples books coins miles hours minutes "
    "price cost buys sells gives keeps shares twice half three four five seven eleven"
).split()


def synthetic_rows(tokens: int, tokenizer, seed: int = 0) -> list[dict]:
    """Prompt/completion rows until ``tokens`` tokens, each of 200-1,800 tokens as the template renders it."""
    from psft_lightning.data.formats import render_prompt

    rng = random.Random(seed)

    def words(n: int) -> list[str]:
        return [rng.choice(WORDS) if i % 9 else str(rng.randint(0, 999)) for i in range(n)]

    per_word = len(tokenizer(" ".join(words(5000)))["input_ids"]) / 5000
    overhead = len(render_prompt(tokenizer, "")) + 2  # the template's system prompt and headers, EOS
    rows, total = [], 0
    while total < tokens:
        length = rng.randint(200, 1800)
        text = words(max(2, int((length - overhead) / per_word)))
        cut = max(1, len(text) // 10)
        rows.append({"prompt": " ".join(text[:cut]), "completion": " ".join(text[cut:])})
        total += length
    return rows


def dataset_file(tokens: int, tokenizer_name: str, root: str) -> str:
    """The synthetic set as JSON Lines under ``root`` (made once per size and tokenizer)."""
    from psft_lightning.models import load_tokenizer

    path = Path(root) / f"synthetic_{tokenizer_name}_{tokens}.jsonl"
    if not path.exists():
        rows = synthetic_rows(tokens, load_tokenizer(tokenizer_name))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        tmp.rename(path)
    return str(path)


def python_loop(path: str, tokenizer) -> list:
    from psft_lightning.data.formats import Fields, row_to_example
    from psft_lightning.data.lengths import fit_length
    from psft_lightning.data.sources import read_rows

    examples = []
    for row, where in read_rows(path, "train"):
        example = row_to_example(row, tokenizer, "auto", Fields(), True, where)
        examples.append(fit_length(example, MAX_LENGTH, "truncate", where)[0])
    return examples


def measure(mode: str, path: str, cache: str, num_proc: int, tokenizer_name: str) -> dict:
    """One measurement in this process: seconds, tokens, rows and resident memory added per token."""
    import psutil

    from psft_lightning.data import PSFTDataModule
    from psft_lightning.models import load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_name)
    tokenizer_s = time.perf_counter() - started
    process = psutil.Process()
    gc.collect()
    rss = process.memory_info().rss
    started = time.perf_counter()
    if mode == "loop":
        kept = python_loop(path, tokenizer)
        rows, tokens, built = len(kept), sum(len(e.input_ids) for e in kept), None
    else:
        dm = PSFTDataModule(
            [path],
            tokenizer=tokenizer_name,
            max_length=MAX_LENGTH,
            batch_size=8,
            val_fraction=0.0,
            cache_dir=cache,
            num_proc=num_proc,
        )
        dm.setup("fit")
        next(iter(dm.train_dataloader()))
        rows, tokens, built = len(dm.train_examples), int(dm.train_examples.lengths.sum()), len(dm.tokenised)
    seconds = time.perf_counter() - started
    gc.collect()
    added = process.memory_info().rss - rss
    return {
        "mode": mode,
        "seconds": round(seconds, 3),
        "rows": rows,
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds),
        "rss_added_mb": round(added / 2**20, 1),
        "bytes_per_token": round(added / tokens, 2),
        "tokenizer_load_s": round(tokenizer_s, 3),
        "cache_entries_built": built,
    }


def measure_isolated(mode: str, path: str, cache: str, num_proc: int, tokenizer_name: str) -> dict:
    cmd = [sys.executable, __file__, mode, path, cache, str(num_proc), tokenizer_name]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"data case {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    tokens: int,
    num_proc: int = 2,
    tokenizer_name: str = TOKENIZER,
    root: str | None = None,
    isolated: bool = True,
    repeats: int = 1,
) -> dict:
    """The three measurements on one set, and the issue's three goals computed from them. The loop and
    the first build alternate ``repeats`` times (a fresh cache each) and the faster of each counts, so a
    burst of load from other processes on a shared machine does not decide the ratio."""
    root = root or os.path.join(tempfile.gettempdir(), "psft_bench_data")
    path = dataset_file(tokens, tokenizer_name, root)
    one = measure_isolated if isolated else measure
    loops, builds = [], []
    for _ in range(repeats):
        cache = tempfile.mkdtemp(prefix="cache-", dir=root)
        loops.append(one("loop", path, cache, num_proc, tokenizer_name))
        builds.append(one("build", path, cache, num_proc, tokenizer_name))
    loop, build = min(loops, key=lambda r: r["seconds"]), min(builds, key=lambda r: r["seconds"])
    cached = one("cached", path, cache, num_proc, tokenizer_name)
    goals = {
        "first_run_speedup": (build["tokens_per_s"] / loop["tokens_per_s"], ">=", 1.8),
        "cached_start_s": (cached["seconds"], "<=", 2.0),
        "bytes_per_token": (cached["bytes_per_token"], "<=", 8.0),
    }
    return {
        "set": {
            "path": path,
            "rows": loop["rows"],
            "tokens": loop["tokens"],
            "num_proc": num_proc,
            "tokenizer": tokenizer_name,
            "cpu_count": os.cpu_count(),
        },
        "loop": loop,
        "build": build,
        "loop_seconds_each": [r["seconds"] for r in loops],
        "build_seconds_each": [r["seconds"] for r in builds],
        "cached": cached,
        "same_tokens": loop["tokens"] == build["tokens"] == cached["tokens"],
        "goals": {
            name: {
                "value": round(value, 3),
                "target": f"{op} {bound}",
                "met": value >= bound if op == ">=" else value <= bound,
            }
            for name, (value, op, bound) in goals.items()
        },
    }


if __name__ == "__main__":
    mode, path, cache, num_proc, tokenizer_name = sys.argv[1:]
    print(json.dumps(measure(mode, path, cache, int(num_proc), tokenizer_name)))
