"""Paired comparisons of two objectives on the same questions, in pure Python (no scipy).

McNemar's exact test uses only the discordant questions; the paired bootstrap resamples questions,
so per-question scores may be fractions (avg@k, or greedy accuracy averaged over seeds).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """``b`` minus ``a`` on the same questions, with a 95% paired-bootstrap interval."""

    diff: float
    low: float
    high: float
    n: int

    def decided(self) -> bool:
        """True when the interval excludes 0 (the sign of the difference is resolved)."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def mcnemar_exact(a: list[bool], b: list[bool]) -> tuple[int, int, float]:
    """Questions only ``a`` got right, only ``b`` got right, and the two-sided exact p-value
    (a binomial test of the discordant pairs at 1/2; 1.0 when there are none)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} answers: a paired test needs the same questions")
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n, low = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return only_a, only_b, min(1.0, 2 * tail)


def paired_bootstrap(a: list[float], b: list[float], samples: int = 2000, seed: int = 0) -> Paired:
    """Mean of ``b - a`` per question and its 2.5-97.5 percentile interval over ``samples`` resamples
    of the questions (seeded: the same inputs always give the same interval)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"{len(a)} and {len(b)} scores: a paired bootstrap needs the same questions")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n, rng = len(diffs), random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(samples))
    return Paired(sum(diffs) / n, means[int(0.025 * samples)], means[math.ceil(0.975 * samples) - 1], n)


def window_change(values: list[float], window: int, samples: int = 2000, seed: int = 0) -> Paired:
    """Mean of the last ``window`` values minus the mean of the first ``window`` (a training curve's
    change over a run, e.g. GRPO's reward per step), with a 95% interval from resampling each window's
    values independently (unpaired: the steps differ). ``n`` is the window."""
    if not 1 <= window <= len(values) // 2:
        raise ValueError(f"a window of {window} needs {2 * max(window, 1)} values or more, got {len(values)}")
    first, last, rng = values[:window], values[-window:], random.Random(seed)
    changes = sorted(
        sum(rng.choices(last, k=window)) / window - sum(rng.choices(first, k=window)) / window
        for _ in range(samples)
    )
    change = sum(last) / window - sum(first) / window
    return Paired(change, changes[int(0.025 * samples)], changes[math.ceil(0.975 * samples) - 1], window)


def pass_change(rows: list[dict], samples: int = 2000, seed: int = 0) -> Paired | None:
    """Each prompt's mean reward at its last pass minus at its first (rows of ``rl.reward.prompt_passes``),
    paired over the prompts seen twice or more: the same prompts before and after, so the prompts'
    difficulty cancels (it does not in a change between steps, which see different prompts). None when
    no prompt came back."""
    passes: dict[int, dict[int, float]] = {}
    for row in rows:
        passes.setdefault(row["prompt"], {})[row["pass"]] = sum(row["rewards"]) / len(row["rewards"])
    pairs = [(seen[min(seen)], seen[max(seen)]) for seen in passes.values() if len(seen) > 1]
    if not pairs:
        return None
    return paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs], samples, seed)
