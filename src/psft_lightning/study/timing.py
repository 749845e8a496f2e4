"""Where a study's wall time goes: per run, start-up, training and each evaluation (dev answers, test
answers, the entropy probe, each OOD set), and the page's table of it."""

from __future__ import annotations

import dataclasses

from psft_lightning.study.budgets import LABELS, Budget
from psft_lightning.study.rl_page import follow_ups, rl_label

EVALUATION = ("dev", "test", "probe", "mc", "drift", "if")  # the evaluation parts of a run's time
SUITE = {"probe": "entropy", "mc": "mc", "drift": "drift", "if": "if"}  # EvalSuite's name of each part


def time_split(wall: float, begin: float, selection, suite) -> dict[str, float]:
    """Seconds of one run: start-up (config, model and data load, until fit or validate began), every
    evaluation part (``SelectCheckpoint.seconds``, ``EvalSuite.seconds``) and training, the rest."""
    parts = {"dev": selection.seconds["dev"], "test": selection.seconds["test"]}
    parts.update({part: suite.seconds.get(group, 0.0) for part, group in SUITE.items()})
    startup = selection.started - begin if selection.started is not None else 0.0
    return {"wall": wall, "start-up": startup, "train": wall - startup - sum(parts.values()), **parts}


def evaluated(split: dict[str, float]) -> float:
    return sum(split[part] for part in EVALUATION)


def timed_runs(record: dict) -> list[tuple[str, dict]]:
    """(label, time split) of every run the study made: the base model, the grid, the later seeds, the
    refresh sweep and the evaluation after each RL follow-up (whose GRPO time counts as training)."""
    rows = [("base model", record["base"])]
    for name, runs in record["grid"].items():
        rows += [(f"{LABELS[name]} lr {r['lr']:g} seed {r['seed']}", r) for r in runs]
    for name, runs in record["chosen"].items():
        rows += [(f"{LABELS[name]} lr {r['lr']:g} seed {r['seed']}", r) for r in runs[1:]]
    own = {r["folder"] for r in record["chosen"].get("psft", [])}  # the sweep's own interval: counted
    rows += [
        (f"PSFT refresh {r['interval']}", r) for r in record.get("refresh", []) if r["folder"] not in own
    ]
    timed = [(label, dict(r["time"])) for label, r in rows if "time" in r]
    for name, rl in follow_ups(record):
        if "time" in rl["after"]:
            split = dict(rl["after"]["time"])
            split["train"] += rl["grpo_seconds"]
            split["wall"] += rl["grpo_seconds"]
            timed.append((rl_label(name, rl), split))
    return timed


def time_rows(record: dict) -> list[str]:
    """The page's table: per run and in total, seconds of start-up, training and each evaluation."""
    timed = timed_runs(record)
    if not timed:
        return []
    header = ["run", "wall", "start-up", "train", "dev", "test", "probe", "MC", "drift", "IF", "eval share"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    total = {key: sum(split[key] for _, split in timed) for key in timed[0][1]}
    for label, split in [*timed, ("**total**", total)]:
        cells = [f"{split[key]:.0f}" for key in ("wall", "start-up", "train", *EVALUATION)]
        share = evaluated(split) / split["wall"] if split["wall"] else 0.0
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {share:.0%} |")
    return lines


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.0f} min"


def wall_time(record: dict, budget: Budget) -> str:
    """The study's wall time against its estimate, the RL follow-up's apart (``--rl`` adds it later)."""
    rl = sum(run["grpo_seconds"] + run["after"]["wall_seconds"] for _, run in follow_ups(record))
    study = record["seconds"] - rl
    estimate = minutes(dataclasses.replace(budget, rl={}).estimate())
    text = (
        f"Wall time of the study {study / 60:.1f} min (estimate for `{record['budget']}`: {estimate}; "
        f"{budget.expected})"
    )
    return text + (f", then the RL follow-up {rl / 60:.1f} min" if rl else "")
