"""The TensorBoard dashboard: chart merging per objective, and a real TensorBoard server (no browser)
asked over HTTP for a tiny run's custom-scalars layout, scalar tags and HPARAMS."""

from __future__ import annotations

import glob
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_reproduce import load_script
from tiny_run import tiny_fit_args

from psft_lightning.callbacks import GenerationEval
from psft_lightning.callbacks.dashboard import (
    RUN,
    TRAINING,
    custom_scalars_layout,
    dashboard_charts,
    final_metric_names,
    merge_charts,
)
from psft_lightning.cli import run_cli
from psft_lightning.objectives import CE, KL, PSFT, Objective, PSFTWarmup

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMON = ["loss and nll", "entropy (train, val)"]
PSFT_CHARTS = ["clip fractions (high/low)", "ratio mean/max", "approx-KL and ref-KL"]
RUN_TITLES = ["val loss and token accuracy", "lr and grad norm", "tokens/s"]


class Weighted(Objective):
    """A plugin objective that adds one series to a common chart and one chart of its own."""

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"loss and nll": ["weighted/loss", "train/nll"], "weights": ["weighted/w_mean"]}


def test_merge_charts_joins_same_titles_in_order_without_duplicates():
    merged = merge_charts({"a": ["x", "y"], "b": ["z"]}, {"b": ["z", "w"], "c": ["v"]}, {"a": ["u"]})
    assert merged == {"a": ["x", "y", "u"], "b": ["z", "w"], "c": ["v"]}


@pytest.mark.parametrize(
    ("objective", "training"),
    [
        (CE(), COMMON),
        (PSFT(), COMMON + PSFT_CHARTS),
        (PSFTWarmup(), COMMON + PSFT_CHARTS),
        (KL(), [*COMMON, "approx-KL and ref-KL"]),
        (Weighted(), [*COMMON, "weights"]),
    ],
)
def test_each_objective_adds_its_charts_after_the_common_ones(objective, training):
    charts = dashboard_charts(objective)
    assert list(charts) == [TRAINING, RUN]
    assert list(charts[TRAINING]) == training
    assert list(charts[RUN]) == RUN_TITLES


def test_charts_with_one_title_share_a_plot():
    assert dashboard_charts(PSFT())[TRAINING]["approx-KL and ref-KL"] == ["psft/approx_kl"]
    assert dashboard_charts(KL())[TRAINING]["approx-KL and ref-KL"] == ["kl/ref_kl"]
    assert dashboard_charts(PSFT())[TRAINING]["clip fractions (high/low)"] == [
        "psft/clip_frac_high",
        "psft/clip_frac_low",
    ]
    weighted = dashboard_charts(Weighted())[TRAINING]
    assert weighted["loss and nll"] == ["train/loss", "train/nll", "weighted/loss"]
    assert weighted["weights"] == ["weighted/w_mean"]


def test_layout_regexes_name_exactly_one_tag():
    layout = custom_scalars_layout({"c": {"t": ["eval/avg@4", "train/loss"]}})
    kind, (avg, loss) = layout["c"]["t"]
    assert kind == "Multiline"
    assert re.match(loss, "train/loss") and not re.match(loss, "train/loss_ema")
    assert re.match(avg, "eval/avg@4") and not re.match(avg, "eval/avg@40")


def test_hparams_metrics_add_what_the_eval_callback_logged_but_not_its_timing():
    evaluation = GenerationEval()
    evaluation.history = [
        (0, {"eval/accuracy": 0.5, "perf/eval_seconds": 3.0}),
        (4, {"eval/accuracy": 0.6, "ood/mc_acc": 0.3}),
    ]
    names = final_metric_names(SimpleNamespace(callbacks=[evaluation]))
    assert names == ["val/loss", "val/entropy", "val/token_accuracy", "eval/accuracy", "ood/mc_acc"]


def test_every_shipped_logger_drops_the_placeholder_metric():
    loggers = {}
    for path in sorted(CONFIGS.rglob("*.yaml")):
        logger = yaml.safe_load(path.read_text()).get("trainer", {}).get("logger")
        if logger is not None:
            loggers[path.name] = logger["init_args"].get("default_hp_metric")
    assert len(loggers) >= 14  # every shipped run config names its TensorBoard logger
    assert set(loggers.values()) == {False}


def event_tags(folder: str) -> dict[str, list[str]]:
    (event_file,) = glob.glob(f"{folder}/events.out.tfevents.*")
    acc = EventAccumulator(event_file)
    acc.Reload()
    return acc.Tags()


def fit_tiny(tmp_path, arithmetic_files, *extra: str):
    """Two steps of configs/tiny.yaml (validation at step 2), logged under ``tmp_path``."""
    logger = "--trainer.logger=true" not in extra
    return run_cli(["fit", *tiny_fit_args(tmp_path, arithmetic_files, 2, *extra, logger=logger)])


def test_tensorboard_serves_the_layout_tags_and_hparams_of_a_run(tmp_path, arithmetic_files):
    cli = fit_tiny(tmp_path, arithmetic_files)
    final_val_loss = float(cli.trainer.callback_metrics["val/loss"])
    script = load_script("tensorboard_screenshot")
    get_json = script.get_json
    with script.serve(str(tmp_path)) as url:
        layout = get_json(f"{url}/data/plugin/custom_scalars/layout")
        tags = set(get_json(f"{url}/data/plugin/scalars/tags")["tiny/version_0"])
        experiment = get_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = get_json(
            f"{url}/data/plugin/hparams/session_groups",
            {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"], "sliceSize": 10},
        )
    categories = layout["category"]
    assert [c["title"] for c in categories] == [TRAINING, RUN]
    assert [c["title"] for c in categories[0]["chart"]][:3] == [*COMMON, "clip fractions (high/low)"]
    regexes = [r for c in categories for chart in c["chart"] for r in chart["multiline"]["tag"]]
    assert len(regexes) == 14
    assert [r for r in regexes if not any(re.match(r, tag) for tag in tags)] == []
    assert "hp_metric" not in tags
    # Time Series lists tag groups alphabetically and expands the first two: those must be psft, train
    assert sorted({tag.split("/")[0] for tag in tags})[:2] == ["psft", "train"]
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"objective", "objective/clip_high", "lr", "schedule", "old_policy/refresh_every_n_steps"} <= names
    assert {"old_policy/mode", "precision", "model", "train_files", "batch_per_step"} <= names
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics == ["val/loss", "val/entropy", "val/token_accuracy"]
    (group,) = groups["sessionGroups"]
    assert group["hparams"]["objective"] == "psft"
    assert group["hparams"]["batch_per_step"] == 4
    val_loss = next(m for m in group["metricValues"] if m["name"]["tag"] == "val/loss")
    assert val_loss["trainingStep"] == 2
    assert val_loss["value"] == pytest.approx(final_val_loss, rel=1e-6)


def test_default_logger_has_no_placeholder_metric(tmp_path, arithmetic_files):
    fit_tiny(tmp_path, arithmetic_files, "--trainer.logger=true", "--trainer.max_steps=1")
    tags = event_tags(f"{tmp_path}/lightning_logs/version_0")
    assert "hp_metric" not in tags["scalars"]
    assert "train/loss" in tags["scalars"]
    assert tags["tensors"] == ["custom_scalars__config__"]
