"""Harder multiple-choice items for data/ood/general_knowledge.jsonl, computed rather than recalled.

Each kind builds its right answer from the numbers or names in the question, so it is certain, and
its three wrong options are close to it (an off-by-a-step value, a neighbour in the same list), so a
small model cannot win by picking the most familiar word. ``make_ood_data.py`` mixes them with the
recall questions; ``tests/test_ood_data.py`` recomputes a sample of every kind.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Item = tuple[str, str, list[str]]  # question, right answer, three wrong options

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
NAMES = ["Anna", "Ben", "Cara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
# (unit asked for, unit given, how many of the first make one of the second)
UNITS = [
    ("centimetres", "metres", 100),
    ("millimetres", "centimetres", 10),
    ("grams", "kilograms", 1000),
    ("millilitres", "litres", 1000),
    ("minutes", "hours", 60),
    ("seconds", "minutes", 60),
    ("hours", "days", 24),
    ("days", "weeks", 7),
    ("months", "years", 12),
    ("metres", "kilometres", 1000),
]
PRIMES = [p for p in range(11, 100) if all(p % d for d in range(2, p))]
ODD_COMPOSITES = [n for n in range(21, 100, 2) if n % 5 and any(n % d == 0 for d in range(3, n, 2))]


def _close(answer: int, rng: random.Random, steps: tuple[int, ...]) -> list[str]:
    """Three distinct wrong values, each a typical slip away from ``answer``."""
    wrong = sorted({answer + s for s in steps} - {answer})
    return [str(w) for w in rng.sample(wrong, 3)]


def conversion(rng: random.Random) -> Item:
    small, big, factor = rng.choice(UNITS)
    n = rng.randint(2, 9)
    answer = n * factor
    wrong = [str(n * factor // 10), str(n * factor * 10), str((n + 1) * factor)]
    return f"How many {small} are in {n} {big}?", str(answer), wrong


def two_step(rng: random.Random) -> Item:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(3, 9)
    answer = (a + b) * c
    return f"What is ({a} + {b}) times {c}?", str(answer), _close(answer, rng, (-c, c, a + b, -1, 1, 10))


def largest(rng: random.Random) -> Item:
    whole = rng.randint(0, 5)
    digits = rng.sample(range(1, 10), 3)
    tenth, hundredth, other = digits
    values = {
        f"{whole}.{tenth}",
        f"{whole}.0{hundredth}",
        f"{whole}.{hundredth}{other}",
        f"{whole}.{other}",
    }
    ordered = sorted(values, key=float)
    listed = sorted(values)
    return f"Which is the largest of {', '.join(listed[:3])} and {listed[3]}?", ordered[-1], ordered[:-1]


def not_prime(rng: random.Random) -> Item:
    answer, wrong = rng.choice(ODD_COMPOSITES), rng.sample(PRIMES, 3)
    listed = sorted([answer, *wrong])
    return (
        f"Which of {listed[0]}, {listed[1]}, {listed[2]} and {listed[3]} is NOT a prime number?",
        str(answer),
        [str(p) for p in wrong],
    )


def day_after(rng: random.Random) -> Item:
    start, shift = rng.randrange(7), rng.randint(2, 6)
    answer = DAYS[(start + shift) % 7]
    wrong = [DAYS[(start + shift + d) % 7] for d in (-1, 1, 2)]
    return f"Which day of the week is {shift} days after {DAYS[start]}?", answer, wrong


def month_before(rng: random.Random) -> Item:
    start, shift = rng.randrange(12), rng.randint(2, 5)
    answer = MONTHS[(start - shift) % 12]
    wrong = [MONTHS[(start - shift + d) % 12] for d in (-1, 1, 2 * shift)]
    return f"Which month comes {shift} months before {MONTHS[start]}?", answer, wrong


def shortest(rng: random.Random) -> Item:
    tall, middle, short, other = rng.sample(NAMES, 4)
    question = (
        f"{tall} is taller than {middle}. {middle} is taller than {short}. "
        f"{other} is taller than {tall}. Who is the shortest?"
    )
    return question, short, [middle, tall, other]


def oldest(rng: random.Random) -> Item:
    first, second, third, fourth = rng.sample(NAMES, 4)
    question = (
        f"{second} is older than {third}. {first} is older than {second}. "
        f"{third} is older than {fourth}. Who is the oldest?"
    )
    return question, first, [second, third, fourth]


def letter_after(rng: random.Random) -> Item:
    start, shift = rng.randrange(18), rng.randint(2, 5)
    answer = chr(ord("A") + start + shift)
    wrong = [chr(ord(answer) + d) for d in (-1, 1, 2)]
    return f"Which letter comes {shift} places after {chr(ord('A') + start)} in the alphabet?", answer, wrong


KINDS: dict[str, Callable[[random.Random], Item]] = {
    "conversion": conversion,
    "two_step": two_step,
    "largest": largest,
    "not_prime": not_prime,
    "day_after": day_after,
    "month_before": month_before,
    "shortest": shortest,
    "oldest": oldest,
    "letter_after": letter_after,
}


def hard_items(rng: random.Random, per_kind: int) -> list[Item]:
    """``per_kind`` items of every kind with distinct questions (a repeat is drawn again)."""
    items: list[Item] = []
    for make in KINDS.values():
        seen: set[str] = set()
        while len(seen) < per_kind:
            question, answer, wrong = make(rng)
            if question not in seen:
                seen.add(question)
                items.append((question, answer, wrong))
    return items
