"""What a command wrote into a folder, so that it later replaces or removes that and nothing else.

A command that writes into a folder it may write again (``psft export``'s model directory, ``psft
study``'s runs folder and plots) records a manifest there: who wrote it and the names (glob patterns)
of the entries it made. Before it removes or replaces anything it asks :func:`foreign` for every entry
the manifest does not cover and refuses, naming them, when there is one. A folder without the
manifest holds nothing the command made, so only an empty one may be written into.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from psft_lightning.errors import ConfigError

MANIFEST = ".psft-manifest.json"


def recorded(folder: Path, owner: str) -> list[str]:
    """The entry patterns ``owner`` recorded in ``folder`` (none without its manifest)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("owner") != owner:
        return []
    return [str(pattern) for pattern in data.get("entries", [])]


def record(folder: Path, owner: str, entries: Iterable[str]) -> None:
    """Record that ``owner`` wrote ``entries`` (names or glob patterns) in ``folder``, creating it."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"owner": owner, "entries": sorted(set(entries))}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def foreign(folder: Path, owner: str) -> list[str]:
    """Entries of ``folder`` that ``owner``'s manifest does not cover (all of them without one)."""
    if not folder.is_dir():
        return []
    patterns = recorded(folder, owner)
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name != MANIFEST and not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns)
    )


def refuse_foreign(folder: Path, owner: str, what: str) -> None:
    """Stop before ``owner`` writes over ``folder`` when it holds entries ``owner`` did not write."""
    if folder.is_symlink():
        raise ConfigError(f"{what} {folder} is a symbolic link; give the folder it points to, or another one")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file, not a folder")
    others = foreign(folder, owner)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ConfigError(
            f"{what} {folder} holds entries {owner} did not write ({shown}); it replaces only its own "
            f"output (listed in {MANIFEST}). Choose a new or empty folder, or move those entries away."
        )


def remove_recorded(folder: Path, owner: str) -> None:
    """Delete the entries of ``folder`` that ``owner``'s manifest covers (after :func:`refuse_foreign`)."""
    patterns = recorded(folder, owner)
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.name == MANIFEST or not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
