"""Peak memory and tokens/s of one long example's training step, 1 rank vs a sequence-parallel group.

One row of ``--lengths`` tokens (one example, 2/3 of it response), one forward + backward of the
step's per-token statistics with activation checkpointing, on a random Llama (``--hidden``,
``--layers``, 8 heads over 4 KV heads, byte vocabulary): first in one process, then in ``--k``
processes over gloo, each holding 1/k of the row. Per rank it records the step's peak resident memory
above what the process held before the step (sampled from /proc every 2 ms) and the step's wall time;
tokens/s is the row's length over the slowest rank's time. On a shared CPU the times are indicative
only. Writes JSON:
``python scripts/bench_long_context.py [--lengths 4096 8192 16384] [--k 2] [--out docs/long_context.json]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time

import torch

from psft_lightning.policies import PolicySettings
from psft_lightning.policies.twins import load_policy
from psft_lightning.sequence_parallel import SequenceParallel
from psft_lightning.step import token_stats


def one_step(length: int, hidden: int, layers: int, k: int, rank: int) -> dict[str, float]:
    """This rank's step on its slice of the row: peak memory above the start (MiB) and seconds."""
    torch.manual_seed(0)
    config = {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers}
    config |= {"num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": length}
    model = load_policy(PolicySettings("tiny", config, gradient_checkpointing=True, sequence_parallel_size=k))
    ids = torch.randint(3, 250, (1, length))
    labels = ids.clone()
    labels[:, : length // 3] = -100
    batch: object = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(length)[None]}
    if k > 1:
        import torch.distributed as dist

        batch = SequenceParallel(dist.group.WORLD, k, rank).shard(batch)
    gc.collect()
    with ResidentPeak() as peak:
        start = time.perf_counter()
        stats = token_stats(model, batch)
        (-stats.logprobs.sum() / (length - length // 3)).backward()
        seconds = time.perf_counter() - start
    return {"peak_mib": peak.above_start / 2**20, "seconds": seconds}


class ResidentPeak:
    """The highest resident memory while inside, above what it was on entry, sampled every 2 ms
    (``ru_maxrss`` would keep the start-up's high-water mark)."""

    def __enter__(self) -> ResidentPeak:
        self.start = self.highest = _resident()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(0.002):
            self.highest = max(self.highest, _resident())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.highest = max(self.highest, _resident())
        self.above_start = self.highest - self.start


def _resident() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rank_main(length: int, hidden: int, layers: int, k: int, out: str) -> None:
    """One rank of the group (started by ``group``)."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=k)
    result = one_step(length, hidden, layers, k, rank)
    results = [None] * k
    dist.all_gather_object(results, result)
    if rank == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def run(length: int, hidden: int, layers: int, k: int) -> list[dict[str, float]]:
    """Every rank's result, each rank (or the one process) started fresh so its peak is its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = f"/tmp/bench_long_context_{os.getpid()}.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, __file__, "--rank-of", str(length), str(hidden), str(layers), str(k), out]
    procs = [subprocess.Popen(args, env={**env, "RANK": str(r)}) for r in range(k)]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a rank failed at {length} tokens, k={k}")
    with open(out, encoding="utf-8") as f:
        results = json.load(f)
    os.remove(out)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default="docs/long_context.json")
    args = parser.parse_args(argv)
    setup = {"hidden": args.hidden, "layers": args.layers, "heads": 8, "kv_heads": 4, "threads_per_rank": 1}
    rows = []
    for length in args.lengths:
        for k in (1, args.k):
            ranks = run(length, args.hidden, args.layers, k)
            row = {
                "tokens": length,
                "ranks": k,
                "peak_mib_per_rank": max(r["peak_mib"] for r in ranks),
                "tokens_per_sec": length / max(r["seconds"] for r in ranks),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            with open(args.out, "w", encoding="utf-8") as f:  # after every row: a long run keeps what it did
                json.dump({"setup": setup, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank-of"]:
        torch.set_num_threads(1)
        length, hidden, layers, k = (int(a) for a in sys.argv[2:6])
        if k == 1:
            with open(sys.argv[6], "w", encoding="utf-8") as f:
                json.dump([one_step(length, hidden, layers, 1, 0)], f)
        else:
            rank_main(length, hidden, layers, k, sys.argv[6])
    else:
        main()
