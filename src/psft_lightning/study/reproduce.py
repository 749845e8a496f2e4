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
    psft study --budget standard --rl 0 1      # then GRPO from the selected SFT and PSFT, two seeds
    psft study --train-file my/train.jsonl --dev-file my/dev.jsonl --test-file my/test.jsonl \\
        --prompt-field question --completion-field answer \\
        --answer-pattern '#### (\\S+)'          # any dataset with a checkable final answer

A row's final answer is its ``--final-field`` (default ``final``), else the last ``--answer-pattern``
match in its completion (``... #### 18``); answers are compared by value when both are numbers
(``1,000`` = ``1000``), else as normalised text. Every row of the three files is checked before any
model loads.

Stopped (SIGTERM, Ctrl-C, a kill), the same command continues the study: the runs it finished are kept,
the others start over (``study/progress.py``). Other settings in the same ``--runs-dir`` are refused;
``--restart`` starts afresh there.

``--root`` (default: the working directory) is the repository whose configs/ and data/ it uses;
``python scripts/reproduce.py`` runs it with the repository the script is in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import time
from pathlib import Path

from jsonargparse import ArgumentParser

from psft_lightning.commands import command_parser
from psft_lightning.errors import ConfigError
from psft_lightning.owned import MANIFEST, recorded
from psft_lightning.owned import record as record_owned
from psft_lightning.study.budgets import BUDGETS, LABELS
from psft_lightning.study.curves import ENTROPY_PNG, plot_entropy
from psft_lightning.study.follow_up import RL_FOLLOW_UP
from psft_lightning.study.frontier import compare
from psft_lightning.study.frontier_page import FRONTIER_PNG, plot_frontier
from psft_lightning.study.measure import measure
from psft_lightning.study.page import write_results
from psft_lightning.study.plots import plot, png_name, read_scalars
from psft_lightning.study.progress import stops_to_continue, write_json
from psft_lightning.study.refresh import REFRESH_SWEEP, interval, refresh_sweep
from psft_lightning.study.rl_page import CURVES, curves
from psft_lightning.study.runs import STUDY
from psft_lightning.study.selection import Task

TAGS = ["train/entropy", "eval/entropy", "dev/accuracy", "train/loss", "psft/clip_frac"]


def parser() -> ArgumentParser:
    parser = command_parser("psft study", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the budget's seeds")
    parser.add_argument("--model", help="base model (default: the budget's; 'tiny' for a quick check)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository: configs/, data/")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"default: <root>/docs/results.md for the {COMMITTED} budget, else <runs-dir>/results.md",
    )
    parser.add_argument("--plots", type=Path, help="PNG folder (default: <out folder>/results)")
    parser.add_argument(
        "--overwrite-committed",
        action="store_true",
        help="write over a page whose record (<plots>/results.json) is of another budget",
    )
    parser.add_argument("--runs-dir", type=Path, help="logs, configs, records (default: <root>/runs/study)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the page and plots from --runs-dir's results.json"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start afresh: remove what an earlier study wrote in --runs-dir (by default the same command "
        "continues it, keeping its finished runs)",
    )
    parser.add_argument(
        "--refresh-sweep",
        nargs="*",
        type=interval,
        metavar="STEPS",
        help="also re-run PSFT (selected lr, first seed) at each old-policy refresh interval, a step count "
        f"or 'never', and table them (no value: {' '.join(map(str, REFRESH_SWEEP))})",
    )
    parser.add_argument(
        "--rl",
        nargs="*",
        type=int,
        metavar="SEED",
        help="also run GRPO from the selected SFT and PSFT checkpoints at each seed (no value: the first "
        "seed), with the budget's RL settings or, where it has none, "
        + ", ".join(f"{k} {v}" for k, v in RL_FOLLOW_UP.items())
        + "; a finished study continues with it (its runs are kept)",
    )
    defaults = Task()
    for name in (f.name for f in dataclasses.fields(Task)):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, default=getattr(defaults, name), help=f"default: {getattr(defaults, name)}")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    root = args.root
    runs_dir = args.runs_dir or root / "runs" / "study"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    saved = runs_dir / "results.json"
    if args.report_only:
        record = read_record(saved)
        out, plots_dir = outputs(args, root, runs_dir, record["budget"])
        check_run_folders(record, runs_dir)
    else:
        out, plots_dir = outputs(args, root, runs_dir, args.budget)
        prepare_plots(plots_dir)
        task = Task(
            **{
                f.name: str(root / value) if f.name.endswith("_file") else value
                for f in dataclasses.fields(Task)
                if (value := getattr(args, f.name)) is not None
            }
        )
        task.check()  # every file and row, before any model loads
        budget = BUDGETS[args.budget]
        if args.seeds:
            budget = dataclasses.replace(budget, seeds=tuple(args.seeds))
        if args.rl is not None:
            budget = dataclasses.replace(budget, rl=budget.rl or RL_FOLLOW_UP)
        if args.refresh_sweep is not None:
            budget = dataclasses.replace(budget, refresh_sweep=tuple(args.refresh_sweep or REFRESH_SWEEP))
        model = args.model or budget.model
        with stops_to_continue(runs_dir):
            rl_seeds = tuple(args.rl or ())
            record = measure(args.budget, budget, task, model, runs_dir, root, args.restart, rl_seeds)
            if budget.refresh_sweep:
                begin = time.perf_counter()
                record["refresh"] = refresh_sweep(
                    record["chosen"]["psft"][0], budget, task, model, runs_dir, root
                )
                record["seconds"] += time.perf_counter() - begin
        record["command"] = "psft study " + shlex.join(argv if argv is not None else [])
        record["seeds"] = list(budget.seeds)
        record["refresh_sweep"] = list(budget.refresh_sweep)
        write_json(saved, record)
    budget = dataclasses.replace(
        BUDGETS[record["budget"]],
        seeds=tuple(record["seeds"]),
        refresh_sweep=tuple(record.get("refresh_sweep", ())),
        rl=record.get("rl_settings", BUDGETS[record["budget"]].rl),
    )
    prepare_plots(plots_dir)
    runs = {LABELS[name]: read_scalars(chosen[0]["folder"]) for name, chosen in record["chosen"].items()}
    plots = plot(runs, TAGS, str(plots_dir))
    rl_plots = plot(curves(record), list(CURVES), str(plots_dir))
    compared = compare(record)
    figures = {
        "frontier": plot_frontier(record, plots_dir, compared),
        "entropy": plot_entropy(record, plots_dir),
    }
    written = {Path(path).name for path in [*plots, *rl_plots, *filter(None, figures.values())]}
    ours = set(recorded(plots_dir, STUDY))
    if not args.report_only:  # report-only deletes nothing; a study drops its own plots it no longer draws
        for name in sorted(ours - written):
            (plots_dir / name).unlink(missing_ok=True)
        ours = set()
    record_owned(plots_dir, STUDY, ours | written)
    write_results(out, record, budget, record["command"], root, plots, rl_plots, figures, compared)
    print(f"wrote {out} and {len(plots)} plots to {plots_dir}; runs took {record['seconds'] / 60:.1f} min")
    return out


COMMITTED = "standard"  # the budget of the page and record committed in docs/


def outputs(args, root: Path, runs_dir: Path, budget: str) -> tuple[Path, Path]:
    """The page and the plots folder. Only the committed budget writes docs/results.md by default; a
    page whose record (``<plots>/results.json``, as committed) is of another budget is kept unless
    ``--overwrite-committed``."""
    out = args.out or (root / "docs" / "results.md" if budget == COMMITTED else runs_dir / "results.md")
    plots_dir = args.plots or out.parent / "results"
    committed = plots_dir / "results.json"
    try:
        other = (
            json.loads(committed.read_text(encoding="utf-8")).get("budget") if committed.is_file() else None
        )
    except ValueError:
        other = None
    if other not in (None, budget) and out.exists() and not args.overwrite_committed:
        raise ConfigError(
            f"{out} is the page of the {other!r} budget (its record: {committed}); this study's budget is "
            f"{budget!r}. Give another --out (and --plots), or pass --overwrite-committed to replace it"
        )
    return out, plots_dir


def read_record(saved: Path) -> dict:
    """The record a study wrote (``--report-only`` rewrites the page from it)."""
    try:
        return json.loads(saved.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"--report-only: {saved} does not exist; give the --runs-dir a study wrote (its results.json "
            "and the runs' TensorBoard folders), or run the study without --report-only"
        ) from None
    except ValueError as err:
        raise ConfigError(f"--report-only: {saved} is not a study record (JSON): {err}") from err


def check_run_folders(record: dict, runs_dir: Path) -> None:
    """``--report-only`` draws the plots from the selected runs' TensorBoard logs: all must be there."""
    folders = [chosen[0]["folder"] for chosen in record["chosen"].values()]
    missing = [folder for folder in folders if not Path(folder).is_dir()]
    if missing:
        raise ConfigError(
            f"--report-only needs the runs' TensorBoard folders as well as {runs_dir / 'results.json'}; "
            f"{len(missing)} of {len(folders)} are missing (e.g. {missing[0]}). Run --report-only where the "
            "study ran (its --runs-dir with the runs' folders), or run the study again"
        )


def prepare_plots(plots_dir: Path) -> None:
    """Refuse a plots folder where a plot would be drawn over a file the study did not write."""
    names = [png_name(tag) for tag in (*TAGS, *CURVES)] + [FRONTIER_PNG, ENTROPY_PNG]
    ours = set(recorded(plots_dir, STUDY))
    if plots_dir.is_symlink() or (plots_dir.exists() and not plots_dir.is_dir()):
        raise ConfigError(f"--plots {plots_dir} is not a plain folder (a file or a symbolic link)")
    clash = [name for name in names if (plots_dir / name).exists() and name not in ours]
    if clash:
        raise ConfigError(
            f"--plots {plots_dir}: {', '.join(clash)} was not written by psft study, which draws only over "
            f"its own plots (listed in {MANIFEST}); choose another --plots folder"
        )
