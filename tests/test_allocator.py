"""allocator.keep_freed_memory: freed memory stays in the process, or glibc's defaults
when opted out; checked in fresh interpreters, since it changes the whole process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys, torch
from psft_lightning.allocator import keep_freed_memory
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
applied = keep_freed_memory()
x = torch.ones(2**26)  # 256 MiB
before = rss_mib()
del x
print(applied, round(before - rss_mib()))
"""


def probe(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PSFT_MALLOC"}
    if env_value is not None:
        env["PSFT_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_memory_stays_resident():
    applied, released_mib = probe(None)
    assert applied == "True" and int(released_mib) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_psft_malloc_system_keeps_glibcs_defaults():
    applied, released_mib = probe("system")
    assert applied == "False" and int(released_mib) == 256  # the mmap'd tensor went back to the OS
