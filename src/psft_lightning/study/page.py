"""The study's results page (Markdown, with its plots), written from the study's record."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from psft_lightning.callbacks.clipped_tokens import markdown_table
from psft_lightning.study import paper
from psft_lightning.study.budgets import BUDGETS, LABELS, PAPER, Budget
from psft_lightning.study.curves import boundaries
from psft_lightning.study.frontier import Matched, compare
from psft_lightning.study.frontier_page import frontier_section
from psft_lightning.study.machine import machine_line
from psft_lightning.study.refresh import refresh_rows
from psft_lightning.study.rl_page import rl_section
from psft_lightning.study.task_page import calibration_section
from psft_lightning.study.timing import minutes, time_rows, wall_time
from psft_lightning.study.verdicts import METRICS, mcnemar, paired, per_seed, spread, verdicts


def shown(path: Path, root: Path) -> str:
    """A path as the reader would type it: relative to the study's root (the repository) when inside it."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def method_rows(record: dict, k: int) -> list[str]:
    """The main table: every objective at its selected lr and checkpoint, mean ± std over seeds."""
    header = ["model", "lr", "epoch", "seeds", "test acc", f"avg@{k}", *METRICS.values(), "wall (s)"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    named = [("base", [record["base"]]), *record["chosen"].items()]
    for name, runs in named:
        cells = [
            LABELS[name],
            "-" if runs[0]["lr"] is None else f"{runs[0]['lr']:g}",
            "/".join(str(r["selected"]["epoch"]) for r in runs),
            str(len(runs)),
            spread(per_seed(runs, "test_greedy")),
            spread(per_seed(runs, "test_avg_k")),
            *(
                spread(per_seed(runs, key)) if all(key in r["metrics"] for r in runs) else "-"
                for key in METRICS
            ),
            f"{statistics.fmean(r['wall_seconds'] for r in runs):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_rows(record: dict, k: int) -> list[str]:
    """The base model and every objective against SFT on the same test questions (first seed): the
    base model's row is what SFT learned, turned round."""
    lines = [
        f"| model | test acc - SFT [95% CI] | right only for SFT / only for it | McNemar p "
        f"| avg@{k} - SFT [95% CI] |",
        "|---|---|---|---|---|",
    ]
    chosen = {"base": [record["base"]], **record["chosen"]}
    for name in chosen:
        if name == "ce":
            continue
        only_ce, only_it, p = mcnemar(chosen, name)
        greedy, sampled = (paired(chosen, name, key) for key in ("test_greedy", "test_avg_k"))
        lines.append(f"| {LABELS[name]} | {greedy} | {only_ce} / {only_it} | {p:.3f} | {sampled} |")
    return lines


def grid_rows(record: dict) -> list[str]:
    """Each lr of the grid: dev accuracy after every epoch and the checkpoint it selects."""
    lines = [
        "| objective | lr | dev acc by epoch | selected epoch | chosen lr | wall (s) |",
        "|---" * 6 + "|",
    ]
    for name, runs in record["grid"].items():
        best = record["chosen"][name][0]["lr"]
        for r in runs:
            curve = ", ".join(f"{c['dev_accuracy']:.3f}" for c in r["checkpoints"])
            mark = "yes" if r["lr"] == best else ""
            lines.append(
                f"| {LABELS[name]} | {r['lr']:g} | {curve} | {r['selected']['epoch']} | {mark} | "
                f"{r['wall_seconds']:.0f} |"
            )
    return lines


def budget_rows() -> list[str]:
    lines = [
        "| budget | rows x epochs | batch | lr grid | seeds (re-run) | dev / test | trained runs "
        "| estimate |",
        "|---" * 8 + "|",
    ]
    for name, b in BUDGETS.items():
        grid = "; ".join(f"{LABELS[o]} {', '.join(f'{lr:g}' for lr in lrs)}" for o, lrs in b.lrs.items())
        lines.append(
            f"| `{name}` | {b.train_rows} x {b.epochs} | {b.batch_size} | {grid} | "
            f"{', '.join(map(str, b.seeds))} ({', '.join(LABELS[o] for o in b.reruns()) or 'none'}) | "
            f"{b.scoring['num_dev']} / {b.scoring['num_test']}"
            + (f" (peers {b.peer_scoring['num_test']})" if "num_test" in b.peer_scoring else "")
            + f" | {b.runs()} | {minutes(b.estimate())} |"
        )
    return lines


def refresh_section(record: dict, budget: Budget) -> list[str]:
    """PSFT's refresh ablation (``psft study --refresh-sweep``), when the study ran it."""
    if not record.get("refresh"):
        return []
    psft = record["chosen"]["psft"][0]
    return [
        "## PSFT's refresh interval",
        "",
        f"PSFT at its selected lr {psft['lr']:g} and seed {psft['seed']}, the same data order, with pi_old "
        f"refreshed every N optimizer steps; `never` snapshots once, at the first step, and keeps that "
        f"denominator. The study's own interval ({budget.refresh_every}) is the PSFT run above. Each run's "
        f"checkpoint is selected on dev; test accuracy (in-domain, {len(psft['test_greedy'])} questions), "
        "probe entropy and drift are measured there.",
        "",
        *refresh_rows(record["refresh"]),
        "",
    ]


def entropy_section(record: dict, plot: Path | None, page: Path) -> list[str]:
    """Claim 1 as the paper plots it: the training responses' entropy per step, over epochs."""
    if plot is None:
        return []
    ce = record["chosen"]["ce"]
    steps = sum(len(r["entropy"]["train"]) for r in ce) // len(ce)
    return [
        "## Entropy over epochs",
        "",
        "Left: `train/entropy` at every optimizer step, the mean over the step's response tokens of the "
        "policy's entropy on its own training batch (teacher-forced, before the update), as the paper "
        f"plots it; {steps} steps per run, epochs ending after steps "
        f"{', '.join(map(str, boundaries(ce[0])))} (dotted). Right: the probe (`eval/entropy`, fixed dev "
        "answers) at the same steps, the base model at 0. SFT and PSFT at their selected lr, every seed "
        "(solid: the first).",
        "",
        f"![entropy over epochs]({os.path.relpath(plot, page.parent)})",
        "",
    ]


def time_section(record: dict) -> list[str]:
    """Where the study's wall time went, per run and in total."""
    rows = time_rows(record)
    if not rows:
        return []
    return [
        "## Where the time went (training vs evaluation)",
        "",
        "Seconds per run: start-up (config, model and data load), training (every optimizer step and "
        "the rest of the loop), and each evaluation: dev answers after each epoch, test answers (greedy "
        "and sampled) at the selected checkpoint, the entropy probe, and the OOD sets (MC, drift, IF; on "
        "the frontier's runs at every epoch). GRPO's time counts as training of its row. The machine is "
        "shared: the load average above says how much other work ran beside the study.",
        "",
        *rows,
        "",
    ]


def write_results(
    path: Path,
    record: dict,
    budget: Budget,
    command: str,
    root: Path,
    plots: list,
    rl_plots: list = (),
    figures: dict[str, Path | None] | None = None,
    compared: dict[str, Matched | None] | None = None,
) -> None:
    """The page: setup, tables, verdicts, the frontier, the RL follow-up, clipped tokens, plots, entropy
    over epochs, the time split, budgets and the paper's numbers. ``figures``: the frontier and entropy
    PNGs (``frontier`` and ``entropy``); ``compared``: ``frontier.compare(record)`` when computed."""
    figures = figures or {}
    compared = compare(record) if compared is None else compared
    k = budget.scoring["k"]
    task, seeds = record["task"], budget.seeds
    clipped = {n: record["chosen"][n][0]["clipped"] for n in ("psft", "psft_warmup") if n in record["chosen"]}
    lines = [
        "# Results: PSFT's claims in miniature",
        "",
        f"Generated by `{command}`; every number of ours below is computed by that run. Model: "
        f"`{record['model']}`. Machine: {machine_line(record)}. {wall_time(record, budget)}; load average "
        f"{record['load'][0]:.1f} -> {record['load'][1]:.1f}.",
        "",
        "## Protocol",
        "",
        f"- Training: a seeded sample of {budget.train_rows} rows of `{shown(task['train_file'], root)}` for "
        f"{budget.epochs} epochs, batch {budget.batch_size}, max_length {budget.max_length}, precision "
        f"{budget.precision}; the same data order for every objective at a seed; OldPolicy refresh every "
        f"{budget.refresh_every} steps; PSFT (warm-up) does {budget.ce_warmup} CE steps first.",
        f"- Selection (as the paper): each lr of the grid is trained at seed {seeds[0]}; after every epoch "
        f"greedy accuracy on {budget.scoring['num_dev']} questions of `{shown(task['dev_file'], root)}` is "
        "measured; each run keeps its best epoch (ties: the earlier), each objective its best lr (ties: the "
        "first of the grid). Objectives outside the grid train at "
        + (f"lr {budget.lr:g}." if budget.lr else "their config's lr."),
        f"- Claims: measured once, at the selected checkpoint, on {budget.scoring['num_test']} questions of "
        f"`{shown(task['test_file'], root)}` (greedy; avg@{k}: {k} samples at temperature 1 on the first "
        f"{budget.scoring.get('num_sampled') or budget.scoring['num_test']}); answers read with "
        f"`{task['answer_pattern']}` against the `{task['final_field']}` field. Seeds "
        f"{', '.join(map(str, seeds[1:])) or '(none)'} re-run "
        f"{', '.join(LABELS[o] for o in budget.reruns()) or 'nothing'} at the selected lr.",
        *(
            [
                f"- Peers (objectives outside the grid) are scored on the first "
                f"{budget.scoring_of('dft')['num_test']} test questions, and paired against SFT on those."
            ]
            if budget.peer_scoring
            else []
        ),
        "- Entropy, MC, drift and IF come from `GenerationEval` at the selected checkpoint: probe entropy on "
        "dev reference answers, lm-eval-style multiple choice, NLL of the base model's own answers (lower = "
        "less drift), prompt-level strict instruction following.",
        "",
        "## Table (selected checkpoints, test split: the paper's protocol)",
        "",
        *method_rows(record, k),
        "",
        "## Paired against SFT (same test questions, first seed)",
        "",
        *paired_rows(record, k),
        "",
        "## The paper's claims, checked",
        "",
        "| claim | shown here | numbers |",
        "|---|---|---|",
        *[f"| {claim} | {verdict} | {detail} |" for claim, verdict, detail in verdicts(record, compared)],
        "",
        *frontier_section(record, compared, figures.get("frontier"), path),
        *rl_section(record, budget, list(rl_plots), path),
        "## The lr grid and the dev curve",
        "",
        *grid_rows(record),
        "",
        *refresh_section(record, budget),
        "## Which tokens PSFT clips",
        "",
        f"The last `ClippedTokens` table of each selected run (seed {seeds[0]}): the tokens whose ratio "
        "passed 1 + clip_high most often in that step.",
    ]
    for name, logged in clipped.items():
        if logged:
            rows = [tuple(row) for row in logged["rows"]]
            lines += ["", f"{LABELS[name]}, step {logged['step']}:", "", markdown_table(rows)]
    lines += [
        "",
        "## Curves",
        "",
        "`train/entropy` per step shows any epoch-boundary sawtooth; `dev/accuracy` is the selection curve.",
        "",
        *[f"![{Path(p).stem}]({os.path.relpath(p, path.parent)})" for p in plots],
        "",
        *entropy_section(record, figures.get("entropy"), path),
        *time_section(record),
        *calibration_section(record, root, path),
        "## Budgets",
        "",
        *budget_rows(),
        "",
        "The estimate is `Budget.estimate()`: (trained runs + 1) x (training tokens x "
        "SECONDS_PER_TRAIN_TOKEN x the objective's TRAIN_COST + generated answers x SECONDS_PER_ANSWER + "
        "SECONDS_PER_RUN + the OOD sets beyond `smoke`'s sizes at per-item rates), with the rates "
        "measured on this project's 2-core machine (src/psft_lightning/study/rates.py).",
        "",
        "## The paper's own numbers",
        "",
        *paper.markdown(),
        "",
        f"Source: [arXiv 2508.17784]({PAPER}).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
