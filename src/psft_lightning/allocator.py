"""Keep freed host memory in the process for reuse (glibc malloc) instead of returning it to the OS.

A training step frees and allocates the same large tensors every step (the LM head's and the
embedding's gradients, the AccumulateGrad sum of a tied head, activations). glibc serves each request
above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns a large free heap top, so
the next step page-faults the memory in again. Where guest memory is backed lazily (this project's
2-core EPYC VMs) that is slow: a fresh 113 MiB tensor took 87-980 ms (median 143) with 6 GiB resident,
against 4-6 ms once the memory is kept. CPU training setups preload jemalloc or tcmalloc for this;
``mallopt`` does it with the C library already loaded. The price: the process's resident memory does not
shrink after a peak (a later allocation reuses it). ``PSFT_MALLOC=system`` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
KEEP_ENV = "PSFT_MALLOC"


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it; True when applied (glibc, not opted out)."""
    if os.environ.get(KEEP_ENV, "") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success: no mmap'd chunks (they are unmapped on free), no trimming of the top
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
