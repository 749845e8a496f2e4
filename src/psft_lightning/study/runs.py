"""One study run: a shipped config with the budget's overrides, trained (or only evaluated) through the
CLI; all runs of a study; their summary over seeds."""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

from psft_lightning.callbacks import ClippedTokens, GenerationEval
from psft_lightning.cli import run_cli
from psft_lightning.evaluation import GROUPS
from psft_lightning.study.budgets import BUDGETS, OBJECTIVES, Budget, eval_config

log = logging.getLogger(__name__)


def run_config(
    objective: str, budget: Budget, model: str, seed: int, out: Path, validate_only: bool, root: Path
) -> dict:
    """<root>/configs/<objective>.yaml with the budget's overrides: steps, sizes, seed, paths, callbacks."""
    with open(root / "configs" / OBJECTIVES[objective], encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    name = "base" if validate_only else objective
    trainer = config["trainer"]
    trainer.update(
        max_steps=budget.steps,
        val_check_interval=budget.steps,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out / name),
        logger={
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(out), "name": name, "version": "", "default_hp_metric": False},
        },
    )
    callbacks = [c for c in trainer.get("callbacks", []) if not c["class_path"].endswith("ModelCheckpoint")]
    for callback in callbacks:
        if callback["class_path"].endswith("OldPolicy"):
            callback.setdefault("init_args", {})["refresh_every_n_steps"] = budget.refresh_every
        if callback["class_path"].endswith("ClippedTokens"):  # the table on the last step before a refresh
            callback.setdefault("init_args", {})["log_clipped_every_n_steps"] = budget.refresh_every
    evaluation = {
        "every_n_steps": 0 if validate_only else budget.eval_every,
        "periodic": list(budget.periodic),
        "start": [] if validate_only else ["entropy"],
        "final": list(GROUPS),
        "config": eval_config(budget, root),
        "drift_cache": str(out.parent / f"drift_reference.{model}.jsonl"),
    }
    callbacks.append({"class_path": "psft_lightning.callbacks.GenerationEval", "init_args": evaluation})
    trainer["callbacks"] = callbacks
    config["seed_everything"] = seed
    config["model"].update(model=model, lr=budget.lr, warmup_steps=min(2, budget.steps // 4))
    if objective == "psft_warmup":
        config["model"]["objective"]["init_args"]["warmup_steps"] = budget.ce_warmup
    data = config["data"]
    data.update(
        train_files=[str(root / budget.train_file)],
        val_files=[str(root / f) for f in data["val_files"]],
        max_length=budget.max_length,
        batch_size=budget.batch_size,
        max_val_examples=budget.eval.get("num_probe", 8),
        seed=seed,
    )
    return config


def run(
    objective: str, budget: Budget, model: str, seed: int, out: Path, root: Path, validate_only: bool = False
) -> tuple[dict, dict]:
    """Train (or only evaluate) one objective through the CLI; its final metrics and wall time, and
    PSFT's last clipped-token table (its step, and rows of token, count, mean ratio; {} without one)."""
    config = run_config(objective, budget, model, seed, out, validate_only, root)
    name = "base" if validate_only else objective
    shutil.rmtree(out / name, ignore_errors=True)
    path = out / f"{name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    begin = time.perf_counter()
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI gets its arguments from ``args`` only
    try:
        cli = run_cli(["validate" if validate_only else "fit", "--config", str(path)])
    finally:
        sys.argv = argv
    seconds = time.perf_counter() - begin
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, GenerationEval))
    last_step = callback.history[-1][0]
    final = {k: v for step, metrics in callback.history if step == last_step for k, v in metrics.items()}
    final.pop("perf/eval_seconds", None)
    final["wall_seconds"] = seconds
    log.info("%s seed %d: %s", name, seed, final)
    clipped = next((c for c in cli.trainer.callbacks if isinstance(c, ClippedTokens)), None)
    tables = clipped.tables if clipped is not None else {}
    return final, {"step": max(tables), "rows": tables[max(tables)]} if tables else {}


# ------------------------------------------------------------------------------------- report
def summarise(results: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and sample standard deviation (0 for one seed) of every metric per model."""
    table = {}
    for name, per_seed in results.items():
        keys = per_seed[0].keys()
        table[name] = {
            k: (
                statistics.fmean(r[k] for r in per_seed),
                statistics.stdev(r[k] for r in per_seed) if len(per_seed) > 1 else 0.0,
            )
            for k in keys
        }
    return table


def measure(args) -> dict:
    """Evaluate the base model once, train and evaluate every objective for every seed."""
    budget = BUDGETS[args.budget]
    model = args.model or budget.model
    seeds = args.seeds or list(budget.seeds)
    begin, load_before = time.perf_counter(), os.getloadavg()[0]
    shutil.rmtree(args.runs_dir, ignore_errors=True)
    results: dict[str, list[dict]] = {"base": []}
    clipped: dict[str, dict] = {}
    base, _ = run(
        "ce", budget, model, seeds[0], args.runs_dir / f"seed{seeds[0]}", args.root, validate_only=True
    )
    for seed in seeds:
        results["base"].append(base)  # greedy and seeded sampling: the base model scores the same each seed
        for objective in OBJECTIVES:
            out = args.runs_dir / f"seed{seed}"
            final, table = run(objective, budget, model, seed, out, args.root)
            results.setdefault(objective, []).append(final)
            if seed == seeds[0] and table:
                clipped[objective] = table
    return {
        "budget": args.budget,
        "model": model,
        "seeds": seeds,
        "results": results,
        "clipped": clipped,
        "seconds": time.perf_counter() - begin,
        "load": [load_before, os.getloadavg()[0]],
    }
