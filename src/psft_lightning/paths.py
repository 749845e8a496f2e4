"""Why a path the user gave cannot be used, in words: a symbolic-link loop or a dangling link is not
"not found", and messages should say which it is."""

from __future__ import annotations

import errno
import os


def why_missing(path: str | os.PathLike, missing: str = "no such file or directory") -> str:
    """What stands in the way of opening ``path``, which does not resolve to an existing file
    (``missing`` when nothing is there at all)."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop (a link that leads back to itself)"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return missing
