"""The study's subsets of a data file: seeded, representative of a sorted file, and nested (a peer's
smaller test sample is the start of the grid's, so paired comparisons see the same questions)."""

from __future__ import annotations

import json
from dataclasses import replace

from psft_lightning.study.budgets import BUDGETS
from psft_lightning.study.runs import epoch_file
from psft_lightning.study.selection import Task, sampled


def test_a_smaller_sample_is_the_start_of_a_larger_one_and_the_seed_fixes_it():
    rows = list(range(100))
    assert sampled(rows, 10) == sampled(rows, 40)[:10] == sampled(rows, 0)[:10]
    assert sorted(sampled(rows, 0)) == rows and sampled(rows, 0) != rows
    assert sampled(rows, 10) == sampled(rows, 10, seed=0) != sampled(rows, 10, seed=1)
    assert sampled(rows, 500) == sampled(rows, 0)  # more than there are: all of them


def test_the_epoch_of_a_sorted_file_is_not_its_first_template(tmp_path):
    # 90 rows of template "a" sorted before 90 of "b": the first 30 rows would all be "a"
    train = tmp_path / "train.jsonl"
    rows = [
        {"question": f"{t} {i:03d}", "answer": "1 + 1 = 2.\nThe answer is 2.", "final": 2}
        for t in "ab"
        for i in range(90)
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    budget = replace(BUDGETS["test"], train_rows=30)
    epoch = epoch_file(Task(train_file=str(train)), budget, tmp_path / "runs")
    chosen = [json.loads(line)["question"][0] for line in epoch.read_text(encoding="utf-8").splitlines()]
    assert len(chosen) == 30 and 9 <= chosen.count("a") <= 21  # a binomial(30, 1/2) well inside its range


def test_the_study_task_is_the_calibrated_one_step_set_read_by_its_last_number():
    task = Task()
    assert task.test_file == "data/arithmetic_one_step/test.jsonl"
    assert [m.group(1) for m in task.compiled().finditer("12 - 5 = 7.\nThe answer is 7.")][-1] == "7"
