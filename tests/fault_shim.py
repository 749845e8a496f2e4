"""Run the ``psft`` entry point with a file-system fault injected, as the test machine (often root, no
small tmpfs) cannot make a real one: ``python fault_shim.py FAULT PREFIX psft-args...``.

- ``EROFS``: creating a folder or opening a file for writing under PREFIX fails as on a read-only mount.
- ``ENOSPC``: writing a checkpoint's temporary file under PREFIX fails after its first bytes, as on a
  full disk (torch's writer then reports its own RuntimeError with the OSError as context).
"""

from __future__ import annotations

import builtins
import errno
import os
import sys


def main() -> None:
    fault, prefix, *args = sys.argv[1:]
    code = getattr(errno, fault)

    def refused(path) -> bool:
        return str(os.fspath(path)).startswith(prefix) if isinstance(path, (str, os.PathLike)) else False

    def fail(path):
        raise OSError(code, os.strerror(code), str(path))

    if fault == "EROFS":
        real_mkdir, real_open = os.mkdir, builtins.open

        def mkdir(path, *a, **k):
            if refused(path) and not os.path.isdir(path):
                fail(path)
            return real_mkdir(path, *a, **k)

        def open_(file, mode="r", *a, **k):
            if refused(file) and any(flag in mode for flag in "wax+"):
                fail(file)
            return real_open(file, mode, *a, **k)

        os.mkdir, builtins.open = mkdir, open_
    else:
        import psft_lightning.checkpointing as checkpointing

        class Full:
            """A file that takes 64 bytes, then reports the disk full."""

            def __init__(self, f) -> None:
                self.f, self.written = f, 0

            def write(self, data) -> int:
                self.written += len(data)
                if self.written > 64:
                    fail(self.f.name)
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.f.close()

        def open_(file, mode="r", *a, **k):
            f = builtins.open(file, mode, *a, **k)
            return Full(f) if refused(file) and "w" in mode else f

        checkpointing.open = open_
    from psft_lightning.cli import main as psft

    sys.argv = ["psft", *args]
    psft()


if __name__ == "__main__":
    main()
