"""The built-in objectives' per-step losses on fixed-seed tiny runs are exactly those recorded before the
objectives were refactored (``tests/loss_record.json``, written by ``tests/loss_record.py``).

Equality is exact: the refactors moved code, not arithmetic, and every recorded value is an fp32 number
produced by the same kernels in the same order on one thread. A change that is meant to move the numbers
regenerates the record in its own commit.
"""

from __future__ import annotations

import json

import pytest
from loss_record import CASES, RECORD, run_case


@pytest.mark.parametrize("name", sorted(CASES))
def test_losses_are_the_recorded_ones(name, tmp_path):
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))[name]
    got = run_case(CASES[name], tmp_path)
    assert sorted(got["train/loss"], key=int) == [str(s) for s in range(6)]
    assert got["val/loss"].keys() == recorded["val/loss"].keys() == {"3", "6"}
    for key in ("train/loss", "val/loss"):
        assert got[key] == recorded[key], key
