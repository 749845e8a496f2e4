"""The default training precision: bf16 mixed precision where the hardware multiplies bf16 matrices
natively (CPUs with AMX or AVX-512 bf16 units, CUDA devices with bf16), fp32 elsewhere.

On such hardware bf16 matmuls run several times faster than fp32 (about 5x for GEMMs on an AMX Xeon);
master weights, AdamW state, log-softmax, entropy, KL and PSFT's log-ratio stay fp32 either way.
A ``trainer.precision`` the user sets (``32-true`` forces fp32) is never changed.
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16 = "bf16-mixed"
FP32 = "32-true"
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16 matrix-unit flags this CPU reports (Linux ``/proc/cpuinfo``; torch's own check elsewhere)."""
    try:
        flags = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        flags = set()
        if torch.cpu._is_amx_tile_supported():
            flags.add("amx_bf16")
        if torch.cpu._is_avx512_bf16_supported():
            flags.add("avx512_bf16")
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def uses_cuda(accelerator: object) -> bool:
    """Whether Lightning will train on CUDA for this ``trainer.accelerator`` value."""
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda"):
        return True
    return name == "auto" and torch.cuda.is_available()


def auto_precision(accelerator: object = "auto") -> tuple[str, str]:
    """The precision to train in on this machine, and the reason, for one log line."""
    if uses_cuda(accelerator):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return BF16, f"{torch.cuda.get_device_name()} supports bf16"
        return FP32, "this CUDA device has no bf16 support"
    flags = cpu_bf16_flags()
    if flags:
        return BF16, f"this CPU has bf16 matrix units ({', '.join(flags)})"
    return FP32, "this CPU has no bf16 matrix units (amx_bf16 / avx512_bf16)"


def precision_line(precision: str, reason: str) -> str:
    other = FP32 if precision == BF16 else BF16
    return f"precision: {precision} ({reason}); set trainer.precision: {other} to override"
