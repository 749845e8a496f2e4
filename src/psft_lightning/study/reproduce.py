"""Reproduce the PSFT paper's four claims in miniature, with one command.

Trains SFT (ce), SFT-KL (kl), PSFT (psft) and PSFT with CE warm-up (psft_warmup) from the same base
model on data/arithmetic with the same data order and step budget, through the package's own CLI
(configs/*.yaml plus the budget's overrides), evaluates the base model and all four with the
GenerationEval callback, and writes a results page with computed verdicts and PNG plots.

    psft study --budget smoke                  # <= 20 min on 2 CPU cores, from the repository
    psft study --budget full --seeds 0 1 2     # GPU-sized; see docs/results.md

``--root`` (default: the working directory) is the repository whose configs/ and data/ it uses;
``python scripts/reproduce.py`` runs it with the repository the script is in.

Claims of arXiv 2508.17784 checked here: (1) SFT's token entropy collapses while PSFT's stays up;
(2) PSFT matches SFT in domain; (3) PSFT forgets less out of domain; (4) SFT-KL and PSFT (warm-up)
sit between SFT and PSFT.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from psft_lightning.study.budgets import BUDGETS
from psft_lightning.study.page import write_results
from psft_lightning.study.plots import DEFAULT_TAGS, find_runs, plot, read_scalars
from psft_lightning.study.runs import measure, summarise


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="psft study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the budget's seeds")
    parser.add_argument("--model", help="base model (default: the budget's; 'tiny' for a quick check)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository: configs/, data/")
    parser.add_argument("--out", type=Path, help="default: <root>/docs/results.md")
    parser.add_argument("--plots", type=Path, help="PNG folder (default: <out folder>/results)")
    parser.add_argument("--runs-dir", type=Path, help="logs, configs (default: <root>/runs/reproduce)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the page and plots from --runs-dir's results.json"
    )
    args = parser.parse_args(argv)
    args.out = args.out or args.root / "docs" / "results.md"
    args.runs_dir = args.runs_dir or args.root / "runs" / "reproduce"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    saved = args.runs_dir / "results.json"
    if args.report_only:
        record = json.loads(saved.read_text(encoding="utf-8"))
        args.budget, args.model = record["budget"], record["model"]
    else:
        record = measure(args)
        saved.write_text(json.dumps(record, indent=1), encoding="utf-8")
    budget, seeds = BUDGETS[args.budget], record["seeds"]
    plots_dir = args.plots or args.out.parent / "results"
    shutil.rmtree(plots_dir, ignore_errors=True)
    folders = find_runs([str(args.runs_dir / f"seed{s}") for s in seeds])
    runs = {label: read_scalars(folder) for label, folder in folders.items()}
    plots = plot(runs, DEFAULT_TAGS, str(plots_dir))
    table = summarise(record["results"])
    write_results(
        args.out,
        table,
        budget,
        args,
        seeds,
        plots_dir,
        plots,
        record["seconds"],
        record["load"],
        record.get("clipped", {}),
    )
    print(
        f"wrote {args.out} and {len(plots)} plots to {plots_dir}; runs took {record['seconds'] / 60:.1f} min"
    )
    return args.out
