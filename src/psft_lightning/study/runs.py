"""The study's runs: a shipped config with the budget's overrides, trained (or only evaluated) through
the CLI's library function ``fit.run_from_config``; the lr grid, the selection on dev and the re-runs at
later seeds."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from psft_lightning.callbacks import ClippedTokens, GenerationEval, OldPolicy
from psft_lightning.data.sources import read_rows
from psft_lightning.fit import run_from_config
from psft_lightning.study import progress
from psft_lightning.study.budgets import Budget, eval_config
from psft_lightning.study.curves import entropy_curves
from psft_lightning.study.frontier import frontier_points
from psft_lightning.study.objectives import objective_configs
from psft_lightning.study.selection import Scoring, SelectCheckpoint, Task, sampled
from psft_lightning.study.timing import time_split

log = logging.getLogger(__name__)
STUDY = "psft study"  # the owner in the manifests of its runs and plots folders (``owned``)
# what a study writes in its --runs-dir: runs per seed, RL follow-ups, the refresh sweep, the record,
# and (for a budget other than the committed one) the page and its plots
STUDY_ENTRIES = (
    "seed*",
    "rl_*",
    "refresh",
    "train_epoch.jsonl",
    "drift_reference.*",
    "results.json",
    "results.md",
    "results",
    "study.json",
    "machine.json",
    ".*.partial",  # a record being written (``progress.write_json``)
)
EXPORT_DIR = "model"  # the selected weights of a run the RL follow-up starts from, under its folder
SELECTION_FILE = "selection.json"  # SelectCheckpoint's part of a run's record, under its folder
OOD_GROUPS = ["entropy", "mc", "drift", "if"]  # in-domain accuracy is SelectCheckpoint's, on dev/test


def run_name(objective: str, lr: float | None) -> str:
    return "base" if lr is None else f"{objective}_lr{lr:g}"


def epoch_file(task: Task, budget: Budget, out: Path) -> Path:
    """``budget.train_rows`` training rows, a seeded sample (``selection.sampled``), as the file every
    run trains on (one epoch). Not the first rows: the bundled files are sorted by question,
    and their first 128 rows were 115 of one template of ten."""
    path = out / "train_epoch.jsonl"
    chosen = sampled([row for row, _ in read_rows(task.train_file)], budget.train_rows)
    rows = [json.dumps(row, ensure_ascii=False) for row in chosen]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def shipped_config(objective: str, root: Path) -> dict:
    """The config under <root>/configs that trains ``objective`` (``budgets.objective_configs``)."""
    with open(objective_configs(root)[objective], encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def config_lr(objective: str, root: Path) -> float:
    return float(shipped_config(objective, root)["model"]["lr"])


def builds(entry: dict, cls: type) -> bool:
    """Whether a config's ``class_path`` entry builds ``cls`` or a subclass, by whichever import path."""
    module, _, name = entry["class_path"].rpartition(".")
    found = getattr(importlib.import_module(module), name, None)
    return isinstance(found, type) and issubclass(found, cls)


@dataclass(frozen=True)
class RunPlan:
    """What one run of the study is: the objective's config, its lr (None: evaluate the model as loaded,
    ``psft validate``), the model and seed, where it writes, whether its selected weights are exported
    (``<folder>/model``, for the RL follow-up), and the model whose own answers the drift set measures."""

    objective: str
    lr: float | None
    model: str
    seed: int
    out: Path
    export: bool = False
    drift_model: str | None = None  # default: ``model``
    refresh_every: int | str | None = None  # OldPolicy's interval (``never`` too); default: the budget's

    @property
    def name(self) -> str:
        suffix = "" if self.refresh_every is None else f"_refresh{self.refresh_every}"
        return run_name(self.objective, self.lr) + suffix


def run_config(plan: RunPlan, budget: Budget, task: Task, root: Path) -> dict:
    """<root>/configs/<objective>.yaml with the budget's overrides."""
    objective, lr, model, seed, out = plan.objective, plan.lr, plan.model, plan.seed, plan.out
    name = plan.name
    config = shipped_config(objective, root)
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
    callbacks = [c for c in trainer.get("callbacks", []) if not builds(c, ModelCheckpoint)]
    for callback in callbacks:
        if builds(callback, OldPolicy):
            every = budget.refresh_every if plan.refresh_every is None else plan.refresh_every
            callback.setdefault("init_args", {})["refresh_every_n_steps"] = every
        if builds(callback, ClippedTokens):  # the table on the last step before a refresh
            callback.setdefault("init_args", {})["log_clipped_every_n_steps"] = budget.refresh_every
    fields = {"prompt_field": task.prompt_field, "completion_field": task.completion_field}
    selection = {
        "task": asdict(task),
        "scoring": asdict(Scoring(**budget.scoring_of(None if lr is None else objective))),
        "out_file": str(out / name / SELECTION_FILE),
        "export_dir": str(out / name / EXPORT_DIR) if plan.export else None,
    }
    # every epoch's checkpoint gets the probe, and on the frontier its OOD sets; the final sets then
    # measure only the rest, on the selected weights (the base model's probe is the base run's)
    frontier = budget.frontier_sets(objective) if plan.refresh_every is None else []  # not the sweep
    every_epoch = [] if lr is None else ["entropy", *frontier]
    measured = budget.final_sets(objective)
    evaluation = {
        "every_n_steps": 0 if lr is None else budget.entropy_every,
        "periodic": ["entropy"],
        "start": [],
        "every_epoch": every_epoch,
        "final": [g for g in OOD_GROUPS if g not in every_epoch and (lr is None or g in measured)],
        "config": {
            **eval_config(budget, root, Path(task.dev_file), fields),
            "final_field": task.final_field,
            "answer_pattern": task.answer_pattern,
        },
        "drift_cache": str(out.parent / f"drift_reference.{plan.drift_model or model}.jsonl"),
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


def run(plan: RunPlan, budget: Budget, task: Task, root: Path) -> dict:
    """Train (or, with ``lr`` None, only evaluate) one run through the CLI: its selection record,
    final OOD metrics, wall time and PSFT's last clipped-token table. A run whose record
    ``<out>/<name>.json`` exists finished earlier (``progress``): that record is returned, nothing runs."""
    objective, lr, seed, out, name = plan.objective, plan.lr, plan.seed, plan.out, plan.name
    if (kept := progress.finished(out / f"{name}.json")) is not None:
        log.info("%s seed %d: kept, finished by an earlier run of this study", name, seed)
        return kept
    config = run_config(plan, budget, task, root)
    shutil.rmtree(out / name, ignore_errors=True)  # what an unfinished run of the study left: redone
    path = out / f"{name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    begin = time.perf_counter()
    cli = run_from_config("fit" if lr is not None else "validate", path)
    seconds = time.perf_counter() - begin
    record = json.loads((out / name / SELECTION_FILE).read_text(encoding="utf-8"))
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, GenerationEval))
    selection = next(c for c in cli.trainer.callbacks if isinstance(c, SelectCheckpoint))
    # the selected epoch's own evaluations, then the final sets (run on the restored selected weights)
    step = record["selected"]["step"]
    at_selected = next((e["metrics"] for e in evaluation.epochs if e["step"] == step), {})
    metrics = {**at_selected, **evaluation.final_metrics}
    metrics.pop("perf/eval_seconds", None)
    clipped = next((c for c in cli.trainer.callbacks if isinstance(c, ClippedTokens)), None)
    tables = clipped.tables if clipped is not None else {}
    record.update(
        objective=objective,
        lr=lr,
        seed=seed,
        folder=str(out / name),
        metrics=metrics,
        wall_seconds=seconds,
        time=time_split(seconds, begin, selection, evaluation.suite),
        points=frontier_points(record["checkpoints"], evaluation.epochs),
        entropy=entropy_curves(out / name) if lr is not None else {},
        clipped={"step": max(tables), "rows": tables[max(tables)]} if tables else {},
    )
    log.info("%s seed %d: selected %s, %.0f s", name, seed, record["selected"], seconds)
    del cli, evaluation, selection, clipped
    gc.collect()  # the run's models are in reference cycles: free them before the next run loads its own
    progress.write_json(out / f"{name}.json", record)  # last: the run is finished
    return record
