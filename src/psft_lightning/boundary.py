"""The one place where an exception from anywhere below the ``psft`` command (the library, Lightning,
torch, the file system) becomes what the user sees: an exit status and one ``psft: error:`` paragraph.

Each :class:`Family` recognises one kind of fault by its type (and errno, or the package that raised
it) and words it; the first family that matches the exception, or an exception in its cause/context
chain, wins. What no family recognises is a genuine internal bug: its traceback is printed, with a
line that says so, and the status is 1. ``cli.main`` wraps whichever subcommand runs in
:func:`error_boundary`.
"""

from __future__ import annotations

import errno
import pickle
import sys
import traceback
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException

from psft_lightning.errors import EXIT_BUG, EXIT_ENVIRONMENT, EXIT_USER_ERROR, PSFTError

BUG_LINE = (
    "psft: this is an internal error of psft-lightning (a bug, not a problem with your input): please "
    "report it with the traceback above"
)


@dataclass(frozen=True)
class Family:
    """A kind of fault: ``matches`` recognises one exception, ``explain`` gives (status, paragraph)."""

    name: str
    matches: Callable[[BaseException], bool]
    explain: Callable[[BaseException], tuple[int, str]]


def chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during (jsonargparse and Lightning wrap)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def raised_in(err: BaseException, *packages: str) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in one of ``packages`` (a path part)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).as_posix()
    return any(f"/{package}" in where for package in packages)


def unreadable_checkpoint(err: BaseException, path: object = None) -> str:
    """What a file ``torch.load`` refused is, in one sentence (its ``path`` when the caller knows it)."""
    where = f" {path}" if path is not None else ""
    return (
        f"Cannot read the checkpoint{where}: it is truncated, corrupted, not a PyTorch checkpoint, or holds "
        f"objects that weights_only loading refuses ({first_line(err)})"
    )


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (torch's are pages long), or its type without one."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------ file system
# a wrong path the user gave (status 2); every other errno is the machine's state (status 4)
USER_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST}
OS_ADVICE = {
    errno.ENOSPC: "no space left on the device. Free space or write elsewhere; files written before, "
    "and the previous checkpoint, are intact (checkpoints are written to a temporary file first)",
    errno.EDQUOT: "the disk quota is exhausted. Free space or write elsewhere; the previous checkpoint "
    "is intact",
    errno.EROFS: "the file system is read-only. Choose a writable folder (trainer.default_root_dir, the "
    "logger's save_dir, --out)",
    errno.EACCES: "permission denied. Choose a folder you can write (trainer.default_root_dir, the logger's "
    "save_dir, --out) or fix its permissions",
    errno.EPERM: "operation not permitted. Choose a folder you own, or fix its permissions",
    errno.ELOOP: "a symbolic link loop (a link that points, through others, back to itself)",
}


def _os_error(err: BaseException) -> tuple[int, str]:
    assert isinstance(err, OSError)
    where = " -> ".join(str(name) for name in (err.filename, err.filename2) if name is not None)
    if err.errno is None:  # libraries' own OSErrors (transformers: no model files in a folder)
        return EXIT_USER_ERROR, str(err)
    what = OS_ADVICE.get(err.errno, err.strerror or errno.errorcode.get(err.errno, str(err.errno)))
    code = EXIT_USER_ERROR if err.errno in USER_PATH_ERRNOS else EXIT_ENVIRONMENT
    return code, f"{where}: {what}" if where else f"{what} ({err})"


# ------------------------------------------------------------------------------------- the others
def _missing_package(err: BaseException) -> bool:
    name = getattr(err, "name", None) or ""
    return isinstance(err, ModuleNotFoundError) and name.split(".")[0] not in ("psft_lightning", "")


def _torch_checkpoint(err: BaseException) -> bool:
    """A file torch.load cannot read: not a zip/pickle, truncated, or refused by ``weights_only``."""
    if isinstance(err, (pickle.UnpicklingError, zipfile.BadZipFile)):
        return True
    return isinstance(err, (RuntimeError, EOFError)) and raised_in(
        err, "torch/serialization.py", "torch/_weights_only_unpickler.py"
    )


def _not_installed(err: BaseException) -> bool:
    text = str(err).lower()
    return "not installed" in text or "pip install" in text


FAMILIES: tuple[Family, ...] = (
    Family("psft", lambda e: isinstance(e, PSFTError), lambda e: (EXIT_USER_ERROR, str(e))),
    Family(
        "lightning setting",
        lambda e: (
            isinstance(e, MisconfigurationException)
            or (isinstance(e, (ValueError, TypeError)) and raised_in(e, "lightning/pytorch/trainer"))
        ),
        lambda e: (EXIT_ENVIRONMENT if _not_installed(e) else EXIT_USER_ERROR, f"trainer setting: {e}"),
    ),
    Family(
        "optimizer argument",
        lambda e: isinstance(e, ValueError) and raised_in(e, "torch/optim"),
        lambda e: (
            EXIT_USER_ERROR,
            f"the optimizer refuses a model setting (model.lr, betas, eps, weight_decay): {e}",
        ),
    ),
    Family(
        "checkpoint format",
        _torch_checkpoint,
        lambda e: (EXIT_USER_ERROR, unreadable_checkpoint(e)),
    ),
    Family(
        "missing package",
        _missing_package,
        lambda e: (
            EXIT_ENVIRONMENT,
            f"the optional package {e.name!r} is not installed: pip install {e.name}",
        ),
    ),
    Family("file system", lambda e: isinstance(e, OSError), _os_error),
)


def classify(err: BaseException) -> tuple[str, int, str] | None:
    """(family name, exit status, paragraph) for a fault the user or the machine caused; None for a bug.

    The exception itself is tried against every family before its cause and context are."""
    for cause in chain(err):
        for family in FAMILIES:
            if family.matches(cause):
                return (family.name, *family.explain(cause))
    return None


@contextmanager
def error_boundary() -> Iterator[None]:
    """Turn an exception in the block into an exit status and one paragraph, or a reported bug."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - the one place every exception is sorted
        found = classify(err)
        if found is None:
            traceback.print_exc()
            print(BUG_LINE, file=sys.stderr)
            sys.exit(EXIT_BUG)
        _, code, message = found
        print(f"psft: error: {message}", file=sys.stderr)
        sys.exit(code)
