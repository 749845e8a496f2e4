"""The machine a study ran on, as a reader needs it to scale the page's times: CPU, cores, torch and
the matmul rate measured at the study's start (times are this machine's, never a target)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an ``n x n @ n x n`` product in bf16 and fp32: the best of ``repeats`` after a warm-up
    (a few seconds on 2 cores; the peak the page's times can be scaled by)."""
    rates = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            begin = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - begin)
        rates[name] = round(2 * n**3 / best / 1e9, 1)
    return rates


MACHINE_FILE = "machine.json"  # in the runs folder: the machine as the study found it when it began


def host() -> dict:
    """This machine's CPU, cores, torch and whether it has a GPU."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.is_available(),
    }


def machine() -> dict:
    """What the page states about the machine, with the matmul rate measured now."""
    return {**host(), "gemm_gflops": gemm_gflops()}


def machine_line(record: dict) -> str:
    """The machine as the record states it (measured when the study began), else this one's."""
    stated = record.get("machine") or host()
    gpu = "CUDA" if stated["gpu"] else "no GPU"
    line = f"{stated['cpu']}, {stated['cores']} CPU cores, torch {stated['torch']}, {gpu}"
    if "gemm_gflops" in stated:
        rates = stated["gemm_gflops"]
        line += f"; matmul peak {rates['bf16']:.0f} GFLOP/s bf16, {rates['fp32']:.0f} fp32 (at the start)"
    return line
