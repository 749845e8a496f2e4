"""The study's runs: a shipped config with the budget's overrides, trained (or only evaluated) through
the CLI; the lr grid, the selection on dev and the re-runs at later seeds."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from psft_lightning.callbacks import ClippedTokens, GenerationEval
from psft_lightning.cli import run_cli
from psft_lightning.data.sources import read_rows
from psft_lightning.study.budgets import OBJECTIVES, Budget, eval_config
from psft_lightning.study.selection import Scoring, Task

log = logging.getLogger(__name__)
OOD_GROUPS = ["entropy", "mc", "drift", "if"]  # in-domain accuracy is SelectCheckpoint's, on dev/test


def run_name(objective: str, lr: float | None) -> str:
    return "base" if lr is None else f"{objective}_lr{lr:g}"


def epoch_file(task: Task, budget: Budget, out: Path) -> Path:
    """The first ``budget.train_rows`` training rows as the file every run trains on (one epoch)."""
    path = out / "train_epoch.jsonl"
    rows = []
    for row, _ in read_rows(task.train_file):
        rows.append(json.dumps(row, ensure_ascii=False))
        if len(rows) == budget.train_rows:
            break
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def config_lr(objective: str, root: Path) -> float:
    with open(root / "configs" / OBJECTIVES[objective], encoding="utf-8") as handle:
        return float(yaml.safe_load(handle)["model"]["lr"])


def run_config(
    objective: str, lr: float | None, budget: Budget, task: Task, model: str, seed: int, out: Path, root: Path
) -> dict:
    """<root>/configs/<objective>.yaml with the budget's overrides; ``lr`` None evaluates the model
    as loaded (``psft validate``) instead of training it."""
    with open(root / "configs" / OBJECTIVES[objective], encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    name = run_name(objective, lr)
    trainer = config["trainer"]
    trainer.pop("max_steps", None)
    trainer.update(
        max_epochs=budget.epochs,
        precision=budget.precision,
        val_check_interval=1.0,
        check_val_every_n_epoch=1,
        limit_val_batches=1 if lr is None else 0,  # no val/loss: the study's dev score is generated
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
    fields = {"prompt_field": task.prompt_field, "completion_field": task.completion_field}
    selection = {
        "task": asdict(task),
        "scoring": asdict(Scoring(**budget.scoring_of(None if lr is None else objective))),
        "out_file": str(out / f"{name}.json"),
    }
    evaluation = {
        "every_n_steps": 0 if lr is None else budget.entropy_every,
        "periodic": ["entropy"],
        "start": [] if lr is None else ["entropy"],
        "final": OOD_GROUPS,
        "config": {**eval_config(budget, root, Path(task.dev_file), fields), "final_field": task.final_field},
        "drift_cache": str(out.parent / f"drift_reference.{model}.jsonl"),
    }
    callbacks += [  # SelectCheckpoint first: the final OOD sets then score the selected weights
        {"class_path": "psft_lightning.study.selection.SelectCheckpoint", "init_args": selection},
        {"class_path": "psft_lightning.callbacks.GenerationEval", "init_args": evaluation},
    ]
    trainer["callbacks"] = callbacks
    config["seed_everything"] = seed
    config["model"].update(model=model, warmup_steps=2)
    if lr is not None:
        config["model"]["lr"] = lr
    if objective == "psft_warmup":
        config["model"]["objective"]["init_args"]["warmup_steps"] = budget.ce_warmup
    config["data"].update(
        train_files=[str(out.parent / "train_epoch.jsonl")],
        val_files=[task.dev_file],
        fields={"prompt": task.prompt_field, "completion": task.completion_field},
        max_length=budget.max_length,
        batch_size=budget.batch_size,
        max_val_examples=budget.batch_size,
        seed=seed,
    )
    return config


def run(
    objective: str, lr: float | None, budget: Budget, task: Task, model: str, seed: int, out: Path, root: Path
) -> dict:
    """Train (or, with ``lr`` None, only evaluate) one run through the CLI: its selection record,
    final OOD metrics, wall time and PSFT's last clipped-token table."""
    config = run_config(objective, lr, budget, task, model, seed, out, root)
    name = run_name(objective, lr)
    shutil.rmtree(out / name, ignore_errors=True)
    path = out / f"{name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    begin = time.perf_counter()
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI gets its arguments from ``args`` only
    try:
        cli = run_cli(["fit" if lr is not None else "validate", "--config", str(path)])
    finally:
        sys.argv = argv
    seconds = time.perf_counter() - begin
    record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, GenerationEval))
    last = evaluation.history[-1][0]
    metrics = {k: v for step, m in evaluation.history if step == last for k, v in m.items()}
    metrics.pop("perf/eval_seconds", None)
    # GenerationEval skips a set already evaluated at a step: a periodic probe at the last step makes the
    # final entropy the last weights'; the probe at the selected step is the selected checkpoint's
    probes = {step: m["eval/entropy"] for step, m in evaluation.history if "eval/entropy" in m}
    metrics["eval/entropy"] = probes.get(record["selected"]["step"], metrics.get("eval/entropy"))
    clipped = next((c for c in cli.trainer.callbacks if isinstance(c, ClippedTokens)), None)
    tables = clipped.tables if clipped is not None else {}
    record.update(
        objective=objective,
        lr=lr,
        seed=seed,
        folder=str(out / name),
        metrics=metrics,
        wall_seconds=seconds,
        clipped={"step": max(tables), "rows": tables[max(tables)]} if tables else {},
    )
    log.info("%s seed %d: selected %s, %.0f s", name, seed, record["selected"], seconds)
    return record


def selected(records: list[dict]) -> dict:
    """The run whose selected checkpoint scores best on dev; ties keep the earlier run of the grid."""
    return max(records, key=lambda r: r["selected"]["dev_accuracy"])


def measure(budget_name: str, budget: Budget, task: Task, model: str, runs_dir: Path, root: Path) -> dict:
    """The base model's scores, each objective's lr grid at the first seed (selected on dev), and the
    ``rerun`` objectives at their selected lr for every later seed."""
    begin, load_before = time.perf_counter(), os.getloadavg()[0]
    shutil.rmtree(runs_dir, ignore_errors=True)
    epoch_file(task, budget, runs_dir)
    first, *later = budget.seeds
    base = run("ce", None, budget, task, model, first, runs_dir / f"seed{first}", root)
    grid: dict[str, list[dict]] = {}
    chosen: dict[str, list[dict]] = {}
    for objective in OBJECTIVES:
        lrs = budget.lrs.get(objective) or (budget.lr or config_lr(objective, root),)
        out = runs_dir / f"seed{first}"
        grid[objective] = [run(objective, lr, budget, task, model, first, out, root) for lr in lrs]
        chosen[objective] = [selected(grid[objective])]
    for seed in later:
        for objective in budget.rerun:
            lr = chosen[objective][0]["lr"]
            chosen[objective].append(
                run(objective, lr, budget, task, model, seed, runs_dir / f"seed{seed}", root)
            )
    return {
        "budget": budget_name,
        "model": model,
        "task": asdict(task),
        "base": base,
        "grid": grid,
        "chosen": chosen,
        "seconds": time.perf_counter() - begin,
        "load": [load_before, os.getloadavg()[0]],
    }
