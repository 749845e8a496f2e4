"""Claim 3 at equal learning: each objective's frontier of in-domain score against out-of-domain
retention over its epoch checkpoints, and PSFT against SFT at matched in-domain score.

A point is one epoch checkpoint of one run (an lr of the grid, or a later seed): its dev accuracy on x
and an OOD score on y (drift NLL, lower is better; MC accuracy and IF strict, higher is better). The
frontier is the upper envelope, the best retention among checkpoints that score at least x in domain:
its corners are the points no other point beats on both axes, joined by straight lines, and flat to
the left of the first corner. Within each seed, both objectives' frontiers are read on a grid across
the overlap of their in-domain ranges; the difference is the mean over that grid, averaged over seeds.
Its interval is a bootstrap over the OOD items (the same resample for every checkpoint: paired) and
over the seeds. The in-domain score of a checkpoint is taken as measured (not resampled).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

X_KEY = "dev_accuracy"  # a checkpoint's in-domain score (SelectCheckpoint's, after each epoch)
# each OOD metric a frontier can use: +1 when higher is better, -1 when lower is
ORIENTATION = {"ood/drift_nll": -1, "ood/mc_acc": 1, "ood/if_strict": 1}
SETS = {"drift": "ood/drift_nll", "mc": "ood/mc_acc", "if": "ood/if_strict"}
GRID = 11  # in-domain scores the two frontiers are compared at, evenly across their overlap
UNDECIDED = "cannot decide"

Corners = list[tuple[float, float]]


def frontier_points(checkpoints: list[dict], epochs: list[dict]) -> list[dict]:
    """One point per epoch checkpoint that GenerationEval measured OOD sets at: its epoch, step,
    in-domain score and per-item OOD values (``GenerationEval.epochs``)."""
    measured = {e["step"]: e for e in epochs if e["items"]}
    return [
        {"epoch": c["epoch"], "step": c["step"], "x": c[X_KEY], "items": measured[c["step"]]["items"]}
        for c in checkpoints
        if c["step"] in measured
    ]


def score(metric: str, items: list, picks: list[int] | None = None) -> float:
    """The metric over the items at ``picks`` (all when None): drift is the token-weighted mean NLL of
    (NLL sum, tokens) pairs, the others the mean of per-item 0/1 values."""
    chosen = items if picks is None else [items[i] for i in picks]
    if metric == "ood/drift_nll":
        return sum(n for n, _ in chosen) / sum(t for _, t in chosen)
    return sum(chosen) / len(chosen)


def envelope(points: list[tuple[float, float]]) -> Corners:
    """The frontier's corners, x ascending and y strictly descending (y: higher is better): every point
    whose y is above that of every point with a higher x (of points at one x, the best)."""
    corners: Corners = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not corners or y > corners[-1][1]:
            corners.append((x, y))
    return corners[::-1]


def at(corners: Corners, x: float) -> float | None:
    """The frontier at in-domain score ``x``: linear between corners, the best y left of the first;
    None beyond the highest score (no checkpoint got there)."""
    if x > corners[-1][0]:
        return None
    if x <= corners[0][0]:
        return corners[0][1]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise AssertionError("unreachable: x is within the corners")


def grid(low: float, high: float, n: int = GRID) -> list[float]:
    """``n`` evenly spaced scores from ``low`` to ``high`` (one when they are equal)."""
    if high == low:
        return [low]
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def overlap(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """The in-domain range both objectives' checkpoints span; None when they do not meet."""
    low, high = max(min(a), min(b)), min(max(a), max(b))
    return (low, high) if low <= high else None


def gap(metric: str, ref: list[dict], other: list[dict], xs: list[float], picks: list[int] | None) -> float:
    """Mean over ``xs`` of ``other``'s frontier minus ``ref``'s, in the metric's own units."""
    sign = ORIENTATION[metric]
    corners = [
        envelope([(p["x"], sign * score(metric, p["items"][metric], picks)) for p in ps])
        for ps in (ref, other)
    ]
    return statistics.fmean(sign * (at(corners[1], x) - at(corners[0], x)) for x in xs)


@dataclass(frozen=True)
class Matched:
    """``other`` minus ``reference`` on one OOD metric at matched in-domain score, with its 95% interval."""

    metric: str
    diff: float
    low: float
    high: float
    ranges: dict[int, tuple[float, float]]  # per seed: the in-domain range compared over
    items: int
    samples: int

    def verdict(self) -> str:
        """'yes' when the whole interval says ``other`` retains more, 'no' when it says less."""
        sign = ORIENTATION[self.metric]
        low, high = sorted((sign * self.low, sign * self.high))
        return "yes" if low > 0 else "no" if high < 0 else UNDECIDED

    def __str__(self) -> str:
        return f"{self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def by_seed(runs: list[dict], metric: str) -> dict[int, list[dict]]:
    """Each seed's frontier points of ``runs`` that measured ``metric``."""
    seeds: dict[int, list[dict]] = {}
    for run in runs:
        for point in run.get("points", []):
            if metric in point["items"]:
                seeds.setdefault(run["seed"], []).append(point)
    return seeds


def matched(
    reference: list[dict], other: list[dict], metric: str, samples: int = 2000, seed: int = 0
) -> Matched | None:
    """``other``'s runs against ``reference``'s on ``metric`` at matched in-domain score (see the module
    docstring); None when no seed of both has checkpoints whose in-domain ranges overlap."""
    ref, oth = by_seed(reference, metric), by_seed(other, metric)
    ranges = {}
    for s in sorted(set(ref) & set(oth)):
        span = overlap([p["x"] for p in ref[s]], [p["x"] for p in oth[s]])
        if span is not None:
            ranges[s] = span
    if not ranges:
        return None
    sizes = {len(p["items"][metric]) for s in ranges for p in (*ref[s], *oth[s])}
    if len(sizes) != 1:
        raise ValueError(f"{metric}: checkpoints measured on different numbers of items {sorted(sizes)}")
    n = sizes.pop()
    xs = {s: grid(*span) for s, span in ranges.items()}

    def statistic(seeds: list[int], picks: list[int] | None) -> float:
        return statistics.fmean(gap(metric, ref[s], oth[s], xs[s], picks) for s in seeds)

    rng, usable = random.Random(seed), list(ranges)
    draws = sorted(
        statistic(rng.choices(usable, k=len(usable)), rng.choices(range(n), k=n)) for _ in range(samples)
    )
    low, high = draws[int(0.025 * samples)], draws[math.ceil(0.975 * samples) - 1]
    return Matched(metric, statistic(usable, None), low, high, ranges, n, samples)


def runs_of(record: dict, objective: str) -> list[dict]:
    """Every run of ``objective``: its lr grid at the first seed and its re-runs at the later ones."""
    return [*record["grid"].get(objective, []), *record["chosen"].get(objective, [])[1:]]


def compare(record: dict, other: str = "psft", reference: str = "ce") -> dict[str, Matched | None]:
    """``other`` against ``reference`` on every OOD metric the study measured at every epoch."""
    runs = {name: runs_of(record, name) for name in (reference, other)}
    measured = {m for run in runs[reference] for p in run.get("points", []) for m in p["items"]}
    return {m: matched(runs[reference], runs[other], m) for m in ORIENTATION if m in measured}
