"""Reproduce the PSFT paper's claims in miniature, with one command.

Trains every shipped objective (SFT, SFT-KL, PSFT, PSFT warm-up, DFT, ASFT, Prob, GIFT, EAFT, DEFT,
TrSFT, EKSFT) from the same base model with the same data order, through the package's own CLI
(configs/*.yaml plus the budget's overrides). Each objective's lr (a small grid for SFT and PSFT) and
checkpoint (one per epoch) are chosen on a dev split; every claim is measured once, on a separate test
split, at that checkpoint, with paired comparisons against SFT (McNemar, paired bootstrap) and the
spread over seeds.

    psft study --budget smoke                  # <= 20 min on 2 CPU cores, from the repository
    psft study --budget standard               # <= 90 min on 2 CPU cores: docs/results.md
    psft study --budget full                   # GPU-sized
    psft study --budget smoke --refresh-sweep  # also PSFT refreshing every 1, 2, 8, 32 steps and never
    psft study --train-file my/train.jsonl --dev-file my/dev.jsonl --test-file my/test.jsonl \\
        --prompt-field problem --completion-field solution --final-field answer \\
        --answer-pattern '#### (\\S+)'          # any dataset with a checkable final answer

``--root`` (default: the working directory) is the repository whose configs/ and data/ it uses;
``python scripts/reproduce.py`` runs it with the repository the script is in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import time
from pathlib import Path

from jsonargparse import ArgumentParser

from psft_lightning.commands import command_parser
from psft_lightning.study.budgets import BUDGETS, LABELS
from psft_lightning.study.page import write_results
from psft_lightning.study.plots import plot, read_scalars
from psft_lightning.study.refresh import REFRESH_SWEEP, interval, refresh_sweep
from psft_lightning.study.rl_page import CURVES, curves
from psft_lightning.study.runs import measure
from psft_lightning.study.selection import Task

TAGS = ["train/entropy", "eval/entropy", "dev/accuracy", "train/loss", "psft/clip_frac"]


def parser() -> ArgumentParser:
    parser = command_parser("psft study", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the budget's seeds")
    parser.add_argument("--model", help="base model (default: the budget's; 'tiny' for a quick check)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository: configs/, data/")
    parser.add_argument("--out", type=Path, help="default: <root>/docs/results.md")
    parser.add_argument("--plots", type=Path, help="PNG folder (default: <out folder>/results)")
    parser.add_argument("--runs-dir", type=Path, help="logs, configs, records (default: <root>/runs/study)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the page and plots from --runs-dir's results.json"
    )
    parser.add_argument(
        "--refresh-sweep",
        nargs="*",
        type=interval,
        metavar="STEPS",
        help="also re-run PSFT (selected lr, first seed) at each old-policy refresh interval, a step count "
        f"or 'never', and table them (no value: {' '.join(map(str, REFRESH_SWEEP))})",
    )
    defaults = Task()
    for name in (f.name for f in dataclasses.fields(Task)):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, default=getattr(defaults, name), help=f"default: {getattr(defaults, name)}")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    root = args.root
    out = args.out or root / "docs" / "results.md"
    runs_dir = args.runs_dir or root / "runs" / "study"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    saved = runs_dir / "results.json"
    if args.report_only:
        record = json.loads(saved.read_text(encoding="utf-8"))
    else:
        task = Task(
            **{
                f.name: str(root / value) if f.name.endswith("_file") else value
                for f in dataclasses.fields(Task)
                if (value := getattr(args, f.name)) is not None
            }
        )
        budget = BUDGETS[args.budget]
        if args.seeds:
            budget = dataclasses.replace(budget, seeds=tuple(args.seeds))
        if args.refresh_sweep is not None:
            budget = dataclasses.replace(budget, refresh_sweep=tuple(args.refresh_sweep or REFRESH_SWEEP))
        model = args.model or budget.model
        record = measure(args.budget, budget, task, model, runs_dir, root)
        if budget.refresh_sweep:
            begin = time.perf_counter()
            record["refresh"] = refresh_sweep(
                record["chosen"]["psft"][0], budget, task, model, runs_dir, root
            )
            record["seconds"] += time.perf_counter() - begin
        record["command"] = "psft study " + shlex.join(argv if argv is not None else [])
        record["seeds"] = list(budget.seeds)
        record["refresh_sweep"] = list(budget.refresh_sweep)
        saved.write_text(json.dumps(record, indent=1), encoding="utf-8")
    budget = dataclasses.replace(
        BUDGETS[record["budget"]],
        seeds=tuple(record["seeds"]),
        refresh_sweep=tuple(record.get("refresh_sweep", ())),
    )
    plots_dir = args.plots or out.parent / "results"
    shutil.rmtree(plots_dir, ignore_errors=True)
    runs = {LABELS[name]: read_scalars(chosen[0]["folder"]) for name, chosen in record["chosen"].items()}
    plots = plot(runs, TAGS, str(plots_dir))
    rl_plots = plot(curves(record), list(CURVES), str(plots_dir))
    write_results(out, record, budget, record["command"], root, plots, rl_plots)
    print(f"wrote {out} and {len(plots)} plots to {plots_dir}; runs took {record['seconds'] / 60:.1f} min")
    return out
