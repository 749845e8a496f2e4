"""The study's plan: the base model, each objective's lr grid at the first seed (selected on dev), the
re-runs at later seeds and the RL follow-up; a stopped study continues (``progress``)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from psft_lightning.owned import record, refuse_foreign
from psft_lightning.study import progress
from psft_lightning.study.budgets import Budget
from psft_lightning.study.follow_up import follow_up
from psft_lightning.study.machine import MACHINE_FILE, machine
from psft_lightning.study.objectives import objective_configs, study_objectives
from psft_lightning.study.runs import STUDY, STUDY_ENTRIES, RunPlan, config_lr, epoch_file, run
from psft_lightning.study.selection import Task

log = logging.getLogger(__name__)


def selected(records: list[dict]) -> dict:
    """The run whose selected checkpoint scores best on dev; ties keep the earlier run of the grid."""
    return max(records, key=lambda r: r["selected"]["dev_accuracy"])


def measure(
    budget_name: str,
    budget: Budget,
    task: Task,
    model: str,
    runs_dir: Path,
    root: Path,
    restart: bool = False,
    rl_seeds: tuple[int, ...] = (),
) -> dict:
    """The base model's scores, each objective's lr grid at the first seed (selected on dev), and the
    ``rerun`` objectives at their selected lr for every later seed; with ``budget.rl``, GRPO from the
    selected SFT and PSFT checkpoints at each of ``rl_seeds`` (default: the first seed). Continues the
    study of the same settings in ``runs_dir`` (``progress``); ``restart`` starts it afresh."""
    begin, load_before = time.perf_counter(), os.getloadavg()[0]
    refuse_foreign(runs_dir, STUDY, "--runs-dir")
    record(runs_dir, STUDY, STUDY_ENTRIES)  # first: a kill from here on leaves only entries it covers
    settings = progress.settings(budget_name, budget, task, model, root)
    if progress.begin_study(runs_dir, STUDY, settings, restart):
        log.info("continuing the study in %s: its finished runs are kept", runs_dir)
    host = progress.finished(runs_dir / MACHINE_FILE)  # measured when the study began, not now
    if host is None:
        host = machine()
        progress.write_json(runs_dir / MACHINE_FILE, host)
    earlier = progress.recorded_seconds(runs_dir, budget.rl)
    epoch_file(task, budget, runs_dir)
    first, *later = budget.seeds
    out = runs_dir / f"seed{first}"
    base = run(RunPlan("ce", None, model, first, out), budget, task, root)
    grid: dict[str, list[dict]] = {}
    chosen: dict[str, list[dict]] = {}
    configs = objective_configs(root)
    skipped = [name for name in study_objectives() if name not in configs]
    if skipped:
        log.warning("no config under %s/configs selects %s: not in the study", root, ", ".join(skipped))
    for objective in configs:
        lrs = budget.lrs.get(objective) or (budget.lr or config_lr(objective, root),)
        export = objective in budget.rl_from  # also without ``rl``: scripts/rl_follow_up.py starts there
        plans = [RunPlan(objective, lr, model, first, out, export) for lr in lrs]
        grid[objective] = [run(plan, budget, task, root) for plan in plans]
        chosen[objective] = [selected(grid[objective])]
    rl_seeds = rl_seeds or (first,)
    rl = {
        objective: [
            follow_up(objective, chosen[objective][0], budget, task, model, runs_dir, root, seed)
            for seed in rl_seeds
        ]
        for objective in (budget.rl_from if budget.rl else ())
    }
    for seed in later:
        for objective in budget.reruns():
            lr = chosen[objective][0]["lr"]
            plan = RunPlan(objective, lr, model, seed, runs_dir / f"seed{seed}")
            chosen[objective].append(run(plan, budget, task, root))
    return {
        "budget": budget_name,
        "model": model,
        "task": asdict(task),
        "base": base,
        "grid": grid,
        "chosen": chosen,
        "rl": {objective: results[0] for objective, results in rl.items()},
        "rl_seeds": {objective: results[1:] for objective, results in rl.items()},
        "rl_settings": budget.rl,
        "seconds": earlier + time.perf_counter() - begin,
        "load": [load_before, os.getloadavg()[0]],
        "machine": host,
    }
