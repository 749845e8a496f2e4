"""The bundled OOD sets (data/ood/): the generator reproduces them byte for byte, every item is well
formed, the documented sizes hold, and the computed multiple-choice answers are right when recomputed
here from the question text alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from scripts_module import load_script

from psft_lightning.evaluation.constraints import CHECKS
from psft_lightning.study.budgets import BUDGETS
from psft_lightning.study.rates import OOD_ROWS, ood_cost

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "ood"
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = "January February March April May June July August September October November December".split()
PER_UNIT = {
    ("centimetres", "metres"): 100,
    ("millimetres", "centimetres"): 10,
    ("grams", "kilograms"): 1000,
    ("millilitres", "litres"): 1000,
    ("minutes", "hours"): 60,
    ("seconds", "minutes"): 60,
    ("hours", "days"): 24,
    ("days", "weeks"): 7,
    ("months", "years"): 12,
    ("metres", "kilometres"): 1000,
}


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generator():
    return load_script("make_ood_data")


def test_same_seed_writes_the_committed_bytes_and_another_seed_differs(generator, tmp_path):
    generator.write_sets(str(tmp_path / "a"), 0)
    generator.write_sets(str(tmp_path / "b"), 1)
    for name in ("general_knowledge.jsonl", "instructions.jsonl", "if_probe.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (DATA / name).read_bytes(), name
    other = (tmp_path / "b" / "general_knowledge.jsonl").read_bytes()
    assert other != (DATA / "general_knowledge.jsonl").read_bytes()


def test_sizes_are_as_documented():
    names = ("general_knowledge.jsonl", "instructions.jsonl", "if_probe.jsonl")
    sizes = {name: len(rows(name)) for name in names}
    assert sizes == {"general_knowledge.jsonl": 208, "instructions.jsonl": 64, "if_probe.jsonl": 64}
    references = rows("drift_reference.smollm2-135m-instruct.jsonl")
    assert [r["prompt"] for r in references] == [r["prompt"] for r in rows("instructions.jsonl")]
    assert all(r["reference"].strip() for r in references)


def test_multiple_choice_items_are_well_formed_and_unique():
    items = rows("general_knowledge.jsonl")
    assert len({it["question"] for it in items}) == len(items)
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4, it
        assert it["answer"] in range(4), it
    positions = [it["answer"] for it in items]
    assert min(positions.count(i) for i in range(4)) >= 35  # the shuffle spreads the right answer


def recompute(question: str) -> str | None:
    """The right answer of a computed item, from its text; None for a recalled item."""
    if m := re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", question):
        return str(int(m[2]) * PER_UNIT[m[1], m[3]])
    if m := re.fullmatch(r"What is \((\d+) \+ (\d+)\) times (\d+)\?", question):
        return str((int(m[1]) + int(m[2])) * int(m[3]))
    if m := re.fullmatch(r"Which is the largest of (\S+), (\S+), (\S+) and (\S+)\?", question):
        return max(m.groups(), key=float)
    if m := re.fullmatch(r"Which of (\d+), (\d+), (\d+) and (\d+) is NOT a prime number\?", question):
        (composite,) = [n for n in m.groups() if any(int(n) % d == 0 for d in range(2, int(n)))]
        return composite
    if m := re.fullmatch(r"Which day of the week is (\d) days after (\w+)\?", question):
        return DAYS[(DAYS.index(m[2]) + int(m[1])) % 7]
    if m := re.fullmatch(r"Which month comes (\d) months before (\w+)\?", question):
        return MONTHS[(MONTHS.index(m[2]) - int(m[1])) % 12]
    if m := re.fullmatch(r"Which letter comes (\d) places after ([A-Z]) in the alphabet\?", question):
        return chr(ord(m[2]) + int(m[1]))
    if m := re.fullmatch(r"(.+) Who is the (shortest|oldest)\?", question):
        pairs = re.findall(r"(\w+) is (?:taller|older) than (\w+)\.", m[1])
        people = {p for pair in pairs for p in pair}
        above = {b for _, b in pairs} if m[2] == "oldest" else {a for a, _ in pairs}
        (answer,) = people - above
        return answer
    return None


def test_every_computed_answer_is_right_when_recomputed():
    computed = 0
    for it in rows("general_knowledge.jsonl"):
        answer = recompute(it["question"])
        if answer is not None:
            assert it["choices"][it["answer"]] == answer, it
            computed += 1
    assert computed == 108  # 9 kinds x 12: every computed item is recomputed


def test_recompute_rejects_a_wrong_key():
    assert recompute("What is (3 + 4) times 5?") == "35"
    assert recompute("Anna is taller than Ben. Ben is taller than Cara. Who is the shortest?") == "Cara"
    assert recompute("What is the capital of France?") is None


def test_instructions_are_distinct_and_probe_checks_are_known_kinds():
    prompts = [r["prompt"] for r in rows("instructions.jsonl")]
    assert len(set(prompts)) == len(prompts) == 64
    probe = rows("if_probe.jsonl")
    assert len({r["prompt"] for r in probe}) == 64
    kinds = [check["kind"] for r in probe for check in r["checks"]]
    assert set(kinds) == set(CHECKS)
    assert sum(len(r["checks"]) > 1 for r in probe) >= 16


def test_standard_budget_reports_every_ood_probe_on_at_least_50_items():
    sizes = {
        "num_mc": "general_knowledge.jsonl",
        "num_drift": "instructions.jsonl",
        "num_if": "if_probe.jsonl",
    }
    assert OOD_ROWS == {key: len(rows(name)) for key, name in sizes.items()}
    standard = BUDGETS["standard"].eval
    assert {key: standard[key] for key in sizes} == {"num_mc": 64, "num_drift": 64, "num_if": 64}
    assert all(50 <= standard[key] <= OOD_ROWS[key] for key in sizes)


def test_ood_cost_is_items_times_rates_beyond_smoke():
    # 64 IF answers x 0.21 s (batches of 64) + 64 questions x 0.46 s + 64 drift rows x 0.59 s, less
    # smoke's 12 IF answers (batches of 16, 0.5 s), 48 questions and 16 drift rows
    assert ood_cost(BUDGETS["standard"].eval) == pytest.approx(13.44 + 29.44 + 37.76)
    assert BUDGETS["standard"].ood_seconds() == pytest.approx(80.64 - (6 + 22.08 + 9.44))
    assert BUDGETS["smoke"].ood_seconds() == 0
    # full: every item, IF answers of 128 tokens cost 128/48 of a 48-token one
    assert ood_cost(BUDGETS["full"].eval) == pytest.approx(64 * 0.5 * 128 / 48 + 208 * 0.46 + 64 * 0.59)
