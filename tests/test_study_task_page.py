"""The page carries the bundled task's calibration table, read from docs/calibration.md."""

from __future__ import annotations

from pathlib import Path

from psft_lightning.study.selection import Task
from psft_lightning.study.task_page import calibration_section, calibration_table

ROOT = Path(__file__).resolve().parent.parent


def test_the_table_after_the_heading_is_read_and_nothing_else():
    text = "# t\n| not | this |\n## Variants tried\n\nwords\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n| c |\n"
    assert calibration_table(text) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert calibration_table("## Variants tried\nno table\n") == [] == calibration_table("| a |\n")


def test_a_study_of_the_bundled_task_shows_the_committed_calibration_and_another_task_does_not():
    bundled = {"task": {"train_file": str(ROOT / Task().train_file)}}
    lines = calibration_section(bundled, ROOT, ROOT / "docs" / "results.md")
    assert lines[0] == "## The task's calibration" and "(calibration.md)" in lines[2]
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[0].startswith("| variant | answer read by | base test |")
    assert any("`data/arithmetic_one_step`" in row for row in rows) and len(rows) >= 6
    assert calibration_section({"task": {"train_file": "/my/train.jsonl"}}, ROOT, ROOT / "results.md") == []
