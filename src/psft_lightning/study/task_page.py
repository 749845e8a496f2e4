"""The page's section on the bundled in-domain task: the calibration table of docs/calibration.md (the
variants tried, with base and SFT accuracy), so a reader sees the verdicts rest on a task off the floor."""

from __future__ import annotations

import os
from pathlib import Path

from psft_lightning.study.selection import Task

CALIBRATION = Path("docs") / "calibration.md"
TABLE_AFTER = "## Variants tried"  # the heading the calibration table follows


def calibration_table(text: str) -> list[str]:
    """The first Markdown table after ``TABLE_AFTER`` (none: no such heading or table)."""
    lines = text.splitlines()
    if TABLE_AFTER not in lines:
        return []
    rest = lines[lines.index(TABLE_AFTER) + 1 :]
    start = next((i for i, line in enumerate(rest) if line.startswith("|")), len(rest))
    table = []
    for line in rest[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def calibration_section(record: dict, root: Path, page: Path) -> list[str]:
    """The section, for a study of the bundled task whose repository has the calibration page."""
    bundled = Path(record["task"]["train_file"]).resolve() == (root / Task().train_file).resolve()
    path = root / CALIBRATION
    table = calibration_table(path.read_text(encoding="utf-8")) if bundled and path.is_file() else []
    if not table:
        return []
    return [
        "## The task's calibration",
        "",
        f"How the bundled task was chosen ([{CALIBRATION.name}]({os.path.relpath(path, page.parent)}), "
        "measured before this study; this study's own base and SFT numbers are in the tables above):",
        "",
        *table,
        "",
    ]
