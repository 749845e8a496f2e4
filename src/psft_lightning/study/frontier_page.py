"""The results page's frontier: every epoch checkpoint of the frontier's runs as a point (in-domain
score, OOD retention), each objective's frontier drawn through its corners, and PSFT against SFT at
matched in-domain score (``study/frontier.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from psft_lightning.study.budgets import LABELS
from psft_lightning.study.frontier import ORIENTATION, X_KEY, Matched, envelope, runs_of, score
from psft_lightning.study.plots import save_figure
from psft_lightning.study.verdicts import METRICS

FRONTIER_PNG = "frontier.png"


def frontier_objectives(record: dict) -> list[str]:
    """The objectives with frontier points, in the study's order."""
    return [name for name in record["grid"] if any(r.get("points") for r in runs_of(record, name))]


def plot_frontier(record: dict, out: Path, compared: dict[str, Matched | None]) -> Path | None:
    """One panel per OOD metric: each objective's points (one marker per seed) and its frontier per
    seed (solid: the first seed), the base model as a star, the matched range of the first seed shaded."""
    names = frontier_objectives(record)
    if not names or not compared:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(compared), figsize=(5.5 * len(compared), 4), squeeze=False)
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    first = record["chosen"][names[0]][0]["seed"]
    for ax, (metric, result) in zip(axes[0], compared.items(), strict=True):
        sign = ORIENTATION[metric]
        for name in names:
            seeds: dict[int, list[tuple[float, float]]] = {}
            for run in runs_of(record, name):
                for p in run.get("points", []):
                    if metric in p["items"]:
                        seeds.setdefault(run["seed"], []).append((p["x"], score(metric, p["items"][metric])))
            for seed, points in seeds.items():
                xs, ys = zip(*points, strict=True)
                marker = "o" if seed == first else "s"
                ax.scatter(xs, ys, color=colours[name], marker=marker, s=18, alpha=0.7)
                corners = [(x, sign * y) for x, y in envelope([(x, sign * y) for x, y in points])]
                cx, cy = zip(*corners, strict=True)
                style = "-" if seed == first else "--"
                ax.plot(cx, cy, style, color=colours[name], label=f"{LABELS[name]} seed {seed}")
        base = record["base"]
        if metric in base["metrics"]:
            ax.scatter([base["selected"][X_KEY]], [base["metrics"][metric]], marker="*", s=120, color="black")
            ax.annotate("base", (base["selected"][X_KEY], base["metrics"][metric]), fontsize=8)
        if result is not None and first in result.ranges:
            ax.axvspan(*result.ranges[first], color="grey", alpha=0.12, linewidth=0)
        ax.set_xlabel(f"in-domain score ({X_KEY.replace('_', ' ')})")
        ax.set_ylabel(f"{METRICS[metric]} ({'higher' if sign > 0 else 'lower'} = retains more)")
        ax.set_title(f"{METRICS[metric]} at every epoch checkpoint", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out, FRONTIER_PNG)


def matched_rows(
    compared: dict[str, Matched | None], other: str = "psft", reference: str = "ce"
) -> list[str]:
    """One row per OOD metric: the difference at matched in-domain score, its interval and range."""
    lines = [
        f"| OOD metric | {LABELS[other]} - {LABELS[reference]} at matched score [95% CI] | matched "
        f"{X_KEY.replace('_', ' ')} (per seed) | items x seeds | {LABELS[other]} retains more |",
        "|---|---|---|---|---|",
    ]
    for metric, result in compared.items():
        if result is None:
            lines.append(f"| {METRICS[metric]} | - | no overlap | - | cannot decide |")
            continue
        ranges = "; ".join(f"seed {s}: {lo:.3f}-{hi:.3f}" for s, (lo, hi) in result.ranges.items())
        lines.append(
            f"| {METRICS[metric]} | {result} | {ranges} | {result.items} x {len(result.ranges)} "
            f"| {result.verdict()} |"
        )
    return lines


def point_rows(record: dict) -> list[str]:
    """Every frontier point: its run (objective and lr), seed, epoch, in-domain score and OOD metrics."""
    names = frontier_objectives(record)
    runs = [(name, run) for name in names for run in runs_of(record, name)]
    metrics = [m for m in ORIENTATION if any(m in p["items"] for _, r in runs for p in r.get("points", []))]
    header = ["run", "seed", "epoch", X_KEY.replace("_", " "), *(METRICS[m] for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, run in runs:
        for p in run.get("points", []):
            values = [f"{score(m, p['items'][m]):.3f}" if m in p["items"] else "-" for m in metrics]
            cells = [
                f"{LABELS[name]} lr {run['lr']:g}",
                str(run["seed"]),
                str(p["epoch"]),
                f"{p['x']:.3f}",
                *values,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def frontier_section(
    record: dict, compared: dict[str, Matched | None], plot: Path | None, page: Path
) -> list[str]:
    """Markdown lines of the section; none when the study measured no frontier."""
    if not compared:
        return []
    return [
        "## Claim 3 at equal learning: the frontier",
        "",
        "Each epoch checkpoint of every run of SFT and PSFT (every lr of the grid at the first seed, the "
        "selected lr at later seeds) is a point: in-domain score on x, out-of-domain retention on y. An "
        "objective's frontier is the best retention among its checkpoints that score at least x in domain "
        "(lines through the corners, flat left of the first). Per seed, both frontiers are read at "
        "11 scores across the overlap of the two objectives' in-domain ranges; the difference is the mean "
        "over those scores and seeds. The interval: 2000 bootstrap resamples of the OOD items (paired: "
        "the same items for every checkpoint) and of the seeds; the in-domain score is taken as measured. "
        "This comparison is not in the paper: it separates forgetting less from learning less.",
        "",
        *matched_rows(compared),
        "",
        *([f"![frontier]({os.path.relpath(plot, page.parent)})", ""] if plot else []),
        "<details><summary>Every frontier point</summary>",
        "",
        *point_rows(record),
        "",
        "</details>",
        "",
    ]
