"""Dashboard: what TensorBoard shows for a run, written with the run.

TensorBoard's custom-scalars tab draws a layout stored in the run's event files; this callback writes
one at fit start (one chart per question, several series where they belong together), so the curves
that tell SFT from PSFT (loss, entropy, clip fractions) sit side by side. At the end of fit it writes
the run's hyper-parameters with the names of the final metrics users compare (the HPARAMS tab).
Objectives add their own charts through ``Objective.dashboard_charts``; nothing here lists them.
"""

from __future__ import annotations

import logging
import os
import re

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from psft_lightning.callbacks.generation_eval import GenerationEval
from psft_lightning.callbacks.old_policy import OldPolicy
from psft_lightning.objectives import Objective

log = logging.getLogger(__name__)

Charts = dict[str, list[str]]
HParam = bool | int | float | str

TRAINING = "training: what tells SFT from PSFT"
RUN = "validation and optimisation"

# the first category opens on these, then on the objective's own charts
TRAINING_CHARTS: Charts = {
    "loss and nll": ["train/loss", "train/nll"],
    "entropy (train, val)": ["train/entropy", "val/entropy"],
}
RUN_CHARTS: Charts = {
    "val loss and token accuracy": ["val/loss", "val/token_accuracy"],
    "lr and grad norm": ["train/lr", "train/grad_norm"],
    "tokens/s": ["train/tokens_per_sec"],
}
# compared across runs in the HPARAMS tab (last value of each), with the eval callback's metrics
FINAL_METRICS = ("val/loss", "val/entropy", "val/token_accuracy")


def merge_charts(*chart_sets: Charts) -> Charts:
    """Charts in order of first appearance; charts with the same title share one plot."""
    merged: Charts = {}
    for charts in chart_sets:
        for title, tags in charts.items():
            series = merged.setdefault(title, [])
            series.extend(tag for tag in tags if tag not in series)
    return merged


def dashboard_charts(objective: Objective) -> dict[str, Charts]:
    """Category -> chart title -> metric tags, for a run of ``objective``."""
    charts = merge_charts(TRAINING_CHARTS, objective.dashboard_charts(), RUN_CHARTS)
    return {
        TRAINING: {title: tags for title, tags in charts.items() if title not in RUN_CHARTS},
        RUN: {title: charts[title] for title in RUN_CHARTS},
    }


def custom_scalars_layout(charts: dict[str, Charts]) -> dict:
    """The layout ``SummaryWriter.add_custom_scalars`` takes; TensorBoard reads each tag as a regex
    matched at the start of a tag name, so each is escaped and anchored to name exactly one tag."""
    return {
        category: {title: ["Multiline", [exact(tag) for tag in tags]] for title, tags in group.items()}
        for category, group in charts.items()
    }


def exact(tag: str) -> str:
    return f"^{re.escape(tag)}$"


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, HParam]:
    """The settings runs are compared by: objective and its arguments, optimisation, old policy,
    precision, model, data files and examples per optimizer step."""
    hp = pl_module.hparams
    objective = pl_module.objective
    params: dict[str, object] = {
        "objective": hp.get("objective_name"),
        **{f"objective/{name}": value for name, value in vars(objective).items()},
        "model": hp.get("model"),
        "lr": hp.get("lr"),
        "schedule": hp.get("schedule"),
        "warmup_steps": hp.get("warmup_steps"),
        "min_lr_ratio": hp.get("min_lr_ratio"),
        "weight_decay": hp.get("weight_decay"),
        "lora_r": (hp.get("lora") or {}).get("r", 0),
        "precision": str(trainer.precision),
        "max_steps": trainer.max_steps,
        "seed": os.environ.get("PL_GLOBAL_SEED"),
    }
    old_policy = next((c for c in trainer.callbacks if isinstance(c, OldPolicy)), None)
    if old_policy is not None and objective.needs().old_policy_from is not None:
        params["old_policy/refresh_every_n_steps"] = old_policy.refresh_every_n_steps
        params["old_policy/mode"] = old_policy.mode
    data = trainer.datamodule
    if data is not None:
        params["train_files"] = ", ".join(map(str, getattr(data, "train_files", [])))
        params["val_files"] = ", ".join(map(str, getattr(data, "val_files", [])))
        batch_size = getattr(data, "batch_size", None)
        if batch_size is not None:
            groups = trainer.world_size // getattr(
                trainer.strategy, "sequence_parallel_size", 1
            )  # share batches
            params["batch_per_step"] = batch_size * trainer.accumulate_grad_batches * groups
    return {name: value for name, value in params.items() if isinstance(value, HParam)}


def final_metric_names(trainer: L.Trainer) -> list[str]:
    """The validation metrics and whatever the GenerationEval callbacks logged (not their timings)."""
    names = list(FINAL_METRICS)
    for callback in trainer.callbacks:
        if isinstance(callback, GenerationEval):
            for _, metrics in callback.history:
                names += [n for n in metrics if n not in names and not n.startswith("perf/")]
    return names


def without_hp_metric(trainer: L.Trainer) -> None:
    """Swap the TensorBoard logger Lightning builds when a config names none for the same logger
    without the ``hp_metric`` placeholder (a -1 that would open the Time Series tab)."""
    if isinstance(trainer.logger, TensorBoardLogger):
        trainer.logger = TensorBoardLogger(
            save_dir=trainer.default_root_dir, version=SLURMEnvironment.job_id(), default_hp_metric=False
        )


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class Dashboard(L.Callback):
    """Write the custom-scalars layout at fit start and the HPARAMS summary at the end of fit, to the
    run's TensorBoard logger (nothing without one). The ``psft`` command adds it to every run."""

    def _writes(self, trainer: L.Trainer) -> TensorBoardLogger | None:
        first = next(c for c in trainer.callbacks if isinstance(c, Dashboard))
        if first is not self or not trainer.is_global_zero:  # one writer per run
            return None
        return tensorboard_logger(trainer)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._writes(trainer)
        if logger is None:
            return
        logger.experiment.add_custom_scalars(custom_scalars_layout(dashboard_charts(pl_module.objective)))
        log.info(
            "dashboard: tensorboard --logdir %s, then open http://localhost:6006/#custom_scalars",
            logger.save_dir,
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After every callback's ``on_fit_end`` (GenerationEval's final evaluation included).

        Lightning's ``log_hyperparams(params, metrics)`` would also log each metric at one step, a
        false point on its curve; TensorBoard takes the metric values from the curves themselves."""
        logger = self._writes(trainer)
        if stage != "fit" or logger is None:
            return
        metrics = dict.fromkeys(final_metric_names(trainer), 0.0)  # only the names are written
        writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams does
        for summary in hparams(run_hparams(trainer, pl_module), metrics):
            writer.add_summary(summary)
        logger.experiment.close()  # flushes it, and the writer GenerationEval's final metrics reopened
