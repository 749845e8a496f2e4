"""Generate the bundled example dataset (arithmetic word problems with step-by-step answers).

It exists so examples, tests and CPU smoke runs have a tiny, license-free, reproducible dataset.
Each row has ``question``, a short ``answer`` (lines like ``12 + 7 = 19.``, last line exactly
``The answer is N.``, parseable with ``The answer is (-?\\d+)\\.``) and the integer ``final``.
Splits: ``train`` (training), ``val`` (training-time validation loss in configs/), ``dev`` (the study
picks each method's lr and checkpoint on it) and ``test`` (the study's claims are measured on it);
no question appears in two splits. They are drawn in that order from one seeded stream, so adding
``dev`` and ``test`` left ``train`` and ``val`` byte-identical.
Stdlib only; the same arguments always produce byte-identical files. Run from the repo root:
``python scripts/make_example_data.py [--seed 0] [--out data/arithmetic] [--train 1000] [--val 64]
[--dev 128] [--test 256]``
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

Person = tuple[str, str, str]  # (name, subject pronoun, object pronoun)
Step = tuple[int, str, int]  # (left, operator, right)
Problem = tuple[str, list[Step]]

SHE, HE = ("She", "her"), ("He", "him")
NAMES: list[Person] = [
    (name, *(SHE if i % 2 == 0 else HE))
    for i, name in enumerate(["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Emma", "Sam"])
]
ITEMS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "shells", "cards", "eggs", "oranges"]
CONTAINERS = ["boxes", "bags", "packs", "jars", "baskets"]
SYMBOLS = {"+": "+", "-": "-", "*": "×", "/": "÷"}


def apply(a: int, op: str, b: int) -> int:
    """Evaluate one step; division is only ever generated when exact."""
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def one_step(r: random.Random, p: Person, m: str, it: str) -> Problem:
    a, b = r.randint(2, 12), r.randint(2, 12)
    options: list[tuple[Step, str]] = [
        ((a + b, "-", b), f"{p[0]} has {a + b} {it} and gives {b} to {m}. How many {it} are left?"),
        ((a * b, "/", b), f"{p[0]} puts {a * b} {it} equally into {b} bags. How many {it} are in each bag?"),
        ((a, "*", b), f"{p[0]} has {a} bags with {b} {it} in each. How many {it} is that?"),
        ((a, "+", b), f"{p[0]} has {a} {it} and {m} has {b} {it}. How many {it} do they have in all?"),
    ]
    step, q = r.choice(options)
    return q, [step]


def buy_give(r: random.Random, p: Person, m: str, it: str) -> Problem:
    a, b = r.randint(5, 60), r.randint(2, 40)
    c = r.randint(1, a + b)
    q = f"{p[0]} has {a} {it}. {p[1]} buys {b} more and gives {c} to {m}. How many {it} does {p[0]} have now?"
    return q, [(a, "+", b), (a + b, "-", c)]


def boxes_give(r: random.Random, p: Person, m: str, it: str) -> Problem:
    k, per, box = r.randint(2, 9), r.randint(2, 12), r.choice(CONTAINERS)
    c = r.randint(1, k * per)
    q = f"{p[0]} buys {k} {box} of {it} with {per} in each. {p[1]} gives {c} to {m}. How many {it} are left?"
    return q, [(k, "*", per), (k * per, "-", c)]


def share(r: random.Random, p: Person, m: str, it: str) -> Problem:
    kids, each = r.randint(2, 9), r.randint(2, 12)
    b = r.randint(1, kids * each - 2)
    q = (
        f"{p[0]} has {kids * each - b} {it} and {m} gives {p[2]} {b} more. {p[1]} shares them "
        f"equally among {kids} friends. How many {it} does each friend get?"
    )
    return q, [(kids * each - b, "+", b), (kids * each, "/", kids)]


def change(r: random.Random, p: Person, m: str, it: str) -> Problem:
    k, price = r.randint(2, 9), r.randint(2, 15)
    bill = r.choice([b for b in (20, 50, 100, 200) if b >= k * price])
    q = (
        f"{it.capitalize()} cost {price} dollars each. {p[0]} buys {k} {it} and pays with a "
        f"{bill}-dollar bill. How many dollars of change does {p[0]} get?"
    )
    return q, [(k, "*", price), (bill, "-", k * price)]


def pages(r: random.Random, p: Person, m: str, it: str) -> Problem:
    per, days = r.randint(5, 30), r.randint(2, 9)
    total = per * days + r.randint(0, 200)
    q = f"A book has {total} pages. {p[0]} reads {per} pages a day for {days} days. How many pages are left?"
    return q, [(per, "*", days), (total, "-", per * days)]


def three_step(r: random.Random, p: Person, m: str, it: str) -> Problem:
    a, b, c = r.randint(3, 50), r.randint(2, 30), r.randint(2, 30)
    d = r.randint(1, a + b + c)
    q = (
        f"{p[0]} has {a} {it}. {m} gives {p[2]} {b}, then {p[1].lower()} finds {c} more and "
        f"loses {d}. How many {it} does {p[0]} have?"
    )
    return q, [(a, "+", b), (a + b, "+", c), (a + b + c, "-", d)]


def split_bags(r: random.Random, p: Person, m: str, it: str) -> Problem:
    kids, each = r.randint(2, 8), r.randint(2, 15)
    total = kids * each
    bags = r.choice([x for x in range(2, 13) if total % x == 0 and total // x >= 2])
    q = (
        f"{p[0]} has {bags} bags with {total // bags} {it} in each. {p[1]} splits all the {it} "
        f"equally between {kids} kids. How many {it} does each kid get?"
    )
    return q, [(bags, "*", total // bags), (total, "/", kids)]


def more_than(r: random.Random, p: Person, m: str, it: str) -> Problem:
    a, b = r.randint(3, 60), r.randint(1, 40)
    q = f"{p[0]} has {a} {it}. {m} has {b} more than {p[0]}. How many {it} do they have together?"
    return q, [(a, "+", b), (a, "+", a + b)]


def earn(r: random.Random, p: Person, m: str, it: str) -> Problem:
    wage, hours = r.randint(5, 20), r.randint(2, 9)
    spent = r.randint(1, wage * hours)
    q = (
        f"{p[0]} earns {wage} dollars an hour and works {hours} hours. {p[1]} spends {spent} "
        f"dollars on {it}. How many dollars does {p[0]} have left?"
    )
    return q, [(wage, "*", hours), (wage * hours, "-", spent)]


SPLITS = {"train": 1000, "val": 64, "dev": 128, "test": 256}  # default rows, in drawing order
TEMPLATES = [one_step, buy_give, boxes_give, share, change, pages, three_step, split_bags, more_than, earn]


def make_row(r: random.Random, templates: list = TEMPLATES) -> dict[str, str | int]:
    """Draw one problem from ``templates`` and render its step-by-step answer."""
    person, other = r.sample(NAMES, 2)
    question, steps = r.choice(templates)(r, person, other[0], r.choice(ITEMS))
    lines = []
    for a, op, b in steps:
        value = apply(a, op, b)
        if not 0 <= value < 1000:
            raise AssertionError(f"out of range: {question!r} {steps}")
        lines.append(f"{a} {SYMBOLS[op]} {b} = {value}.")
    final = apply(*steps[-1])
    lines.append(f"The answer is {final}.")
    return {"question": question, "answer": "\n".join(lines), "final": final}


def generate(
    r: random.Random, count: int, seen: set[str], templates: list = TEMPLATES
) -> list[dict[str, str | int]]:
    """Draw ``count`` rows whose questions are not in ``seen`` (updated in place), sorted by question."""
    rows: list[dict[str, str | int]] = []
    for _ in range(100 * count + 1):
        if len(rows) == count:
            break
        row = make_row(r, templates)
        if row["question"] not in seen:
            seen.add(str(row["question"]))
            rows.append(row)
    else:
        raise RuntimeError(f"could not draw {count} distinct questions")
    return sorted(rows, key=lambda row: str(row["question"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the arithmetic example dataset.")
    parser.add_argument("--seed", type=int, default=0, help="random.Random seed")
    parser.add_argument("--out", type=Path, default=Path("data/arithmetic"), help="output directory")
    for split, count in SPLITS.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"number of {split} rows")
    names = [t.__name__ for t in TEMPLATES]
    parser.add_argument(
        "--templates", default=",".join(names), help=f"comma-separated subset of {', '.join(names)}"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.templates.split(",")) - set(names))
    if unknown:
        parser.error(f"unknown templates {unknown}; known: {names}")
    templates = [t for t in TEMPLATES if t.__name__ in args.templates.split(",")]
    r, seen = random.Random(args.seed), set[str]()
    # one shared `seen`: no question of a split repeats one of an earlier split
    splits = {split: generate(r, getattr(args, split), seen, templates) for split in SPLITS}
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (args.out / f"{split}.jsonl").write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {', '.join(f'{len(rows)} {split}' for split, rows in splits.items())} rows to {args.out}")


if __name__ == "__main__":
    main()
