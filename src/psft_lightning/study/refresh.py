"""PSFT's refresh ablation: the selected PSFT run again at each old-policy refresh interval, ``never``
included (one snapshot at the first step, never refreshed: a fixed denominator), and its table on the
study page.

The official repository's discussion reports that a fixed denominator trained poorly and that refreshing
more often helps; this sweep measures it with the study's own protocol: the same data order, seed and lr
(PSFT's selected one), each run's checkpoint selected on dev, then entropy, in-domain test accuracy and
drift at that checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from psft_lightning.study.budgets import Budget
from psft_lightning.study.plots import read_scalars
from psft_lightning.study.runs import RunPlan, run
from psft_lightning.study.selection import Task

REFRESH_SWEEP: tuple[int | str, ...] = (1, 2, 8, 32, "never")


def interval(text: str) -> int | str:
    """A ``--refresh-sweep`` value: a positive step count or ``never``."""
    if text == "never":
        return text
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"a refresh interval is a step count >= 1 or 'never', got {text!r}")
    return int(text)


def refresh_sweep(
    psft: dict, budget: Budget, task: Task, model: str, runs_dir: Path, root: Path
) -> list[dict]:
    """PSFT at its selected lr and first seed for every interval of ``budget.refresh_sweep``, under
    ``<runs_dir>/refresh``; the budget's own interval is ``psft`` itself (the same run), the others are
    trained anew. Each record gains ``interval`` and ``snapshots`` (pi_old's refreshes, from its
    ``psft/refreshes`` log)."""
    records = []
    for every in budget.refresh_sweep:
        if every == budget.refresh_every:
            record = dict(psft)
        else:
            plan = RunPlan("psft", psft["lr"], model, psft["seed"], runs_dir / "refresh", refresh_every=every)
            record = run(plan, budget, task, root)
        logged = read_scalars(record["folder"]).get("psft/refreshes", [(0, 0.0)])
        records.append({**record, "interval": every, "snapshots": int(logged[-1][1])})
    return records


def refresh_rows(records: list[dict]) -> list[str]:
    """The sweep's table: per interval, pi_old's snapshots, the selected epoch and the claims' measures."""
    lines = [
        "| refresh every | snapshots | selected epoch | test acc | dev acc | entropy | drift NLL ↓ "
        "| wall (s) |",
        "|---" * 8 + "|",
    ]
    for r in records:
        n = r["interval"]
        every = "never" if n == "never" else f"{n} step" + ("s" if n != 1 else "")
        test = sum(r["test_greedy"]) / len(r["test_greedy"])
        cells = [
            every,
            str(r["snapshots"]),
            str(r["selected"]["epoch"]),
            f"{test:.3f}",
            f"{r['selected']['dev_accuracy']:.3f}",
            f"{r['metrics']['eval/entropy']:.3f}",
            f"{r['metrics']['ood/drift_nll']:.3f}",
            f"{r['wall_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
