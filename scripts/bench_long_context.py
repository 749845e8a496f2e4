"""Peak memory and tokens/s of one long example's training step, 1 rank vs a sequence-parallel group.

One row of ``--lengths`` tokens (one example, 2/3 of it response), one optimizer step (forward +
backward of the step's per-token statistics with activation checkpointing, the gradients summed over
the group, AdamW) on a random Llama (``--hidden``, ``--layers``, 8 heads over 4 KV heads, byte
vocabulary): first in one process, then in ``--k`` processes over gloo, each holding 1/k of the row.
Per rank it records, over the forward + backward:

- the activation part: the peak of the tensor bytes allocated during it and still alive (a
  ``LiveTensors`` dispatch mode; the weights and gradients are allocated before it, the optimizer's
  state after it), and what is alive at that peak, by the op that made it;
- the peak resident memory above what the process held before (sampled from /proc every 2 ms; and
  the process's whole peak, ``process_peak_mib_per_rank``), which also counts what is not a tensor:
  gloo's buffers, kernels' scratch, the allocator's arenas;

and the step's wall time; tokens/s is the row's length over the slowest rank's time. On a shared CPU
the times are indicative only. ``--ranks 1`` (or ``--ranks 2``) runs one side only. Writes JSON:
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
import weakref
from collections import Counter

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from psft_lightning.policies import PolicySettings
from psft_lightning.policies.twins import load_policy
from psft_lightning.sequence_parallel import SequenceParallel
from psft_lightning.step import token_stats


def one_step(length: int, hidden: int, layers: int, k: int, rank: int) -> dict:
    """This rank's optimizer step on its slice of the row: its activation part and resident peak (MiB)
    and its seconds."""
    torch.manual_seed(0)
    config = {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers}
    config |= {"num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": length}
    model = load_policy(PolicySettings("tiny", config, gradient_checkpointing=True, sequence_parallel_size=k))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # allocated now: the step's own tensors are what it adds to these
    ids = torch.randint(3, 250, (1, length))
    labels = ids.clone()
    labels[:, : length // 3] = -100
    batch: object = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(length)[None]}
    if k > 1:
        batch = SequenceParallel(dist.group.WORLD, k, rank).shard(batch)
    gc.collect()
    with ResidentPeak() as peak, LiveTensors() as live:
        start = time.perf_counter()
        stats = token_stats(model, batch)
        (-stats.logprobs.sum() / (length - length // 3)).backward()
        seconds = time.perf_counter() - start
    if k > 1:
        for p in model.parameters():
            dist.all_reduce(p.grad)
    optimizer.step()
    mib = 2**20
    largest = sorted(live.at_peak.items(), key=lambda item: -item[1])[:4]
    return {
        "activation_mib": live.peak / mib,
        "peak_mib": peak.above_start / mib,
        "start_mib": peak.start / mib,
        "seconds": seconds,
        "at_peak_mib": {op: round(n / mib, 1) for op, n in largest},
    }


class LiveTensors(TorchDispatchMode):
    """Bytes of the tensor storages allocated while inside that are still alive (``live``), their
    highest value (``peak``) and, at that moment, the live bytes by the op that allocated them
    (``at_peak``). A storage counts once however many views share it; one an op got from its inputs
    (a view, an in-place result) or that existed before is not counted."""

    def __enter__(self) -> LiveTensors:
        self.live = self.peak = 0
        self.at_peak: dict[str, int] = {}
        self._by_op: Counter[str] = Counter()
        self._seen: set[int] = set()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        given = {t.untyped_storage()._cdata for t in inputs}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage._cdata not in given and storage._cdata not in self._seen:
                    self._allocated(storage, str(func.overloadpacket.__name__))
        return out

    def _allocated(self, storage: torch.UntypedStorage, op: str) -> None:
        nbytes, key = storage.nbytes(), storage._cdata
        self._seen.add(key)
        self.live += nbytes
        self._by_op[op] += nbytes
        if self.live > self.peak:
            self.peak, self.at_peak = self.live, dict(self._by_op)
        weakref.finalize(storage, self._freed, key, nbytes, op)

    def _freed(self, key: int, nbytes: int, op: str) -> None:
        self._seen.discard(key)
        self.live -= nbytes
        self._by_op[op] -= nbytes


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
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=k)
    result = one_step(length, hidden, layers, k, rank)
    results = [None] * k
    dist.all_gather_object(results, result)
    if rank == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def run(length: int, hidden: int, layers: int, k: int) -> list[dict]:
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
    parser.add_argument("--ranks", type=int, nargs="+", help="the sides to run (default: 1 and k)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default="docs/long_context.json")
    parser.add_argument("--append", action="store_true", help="add the rows to those --out holds")
    args = parser.parse_args(argv)
    setup = {"hidden": args.hidden, "layers": args.layers, "heads": 8, "kv_heads": 4, "threads_per_rank": 1}
    rows = []
    if args.append and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            rows = json.load(f)["rows"]
    for length in args.lengths:
        for k in args.ranks or (1, args.k):
            ranks = run(length, args.hidden, args.layers, k)
            largest = max(ranks, key=lambda r: r["activation_mib"])
            row = {
                "tokens": length,
                "ranks": k,
                "activation_mib_per_rank": largest["activation_mib"],
                "peak_mib_per_rank": max(r["peak_mib"] for r in ranks),
                "process_peak_mib_per_rank": max(r["start_mib"] + r["peak_mib"] for r in ranks),
                "tokens_per_sec": length / max(r["seconds"] for r in ranks),
                "at_activation_peak_mib": largest["at_peak_mib"],
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
