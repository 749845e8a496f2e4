"""Every objective of the SFT family trains configs/tiny.yaml through the ``psft`` CLI and logs its own
TensorBoard tags next to train/nll; each shipped config parses and names its objective."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from test_cli import scalars
from tiny_run import tiny_fit_args

from psft_lightning.cli import run_cli
from psft_lightning.objectives import objective_class

REPO = Path(__file__).resolve().parents[1]

FORWARD_KL = "psft_lightning.objectives.KL --model.objective.direction=forward"
# objective (with init args) -> the tags it adds beyond train/loss and train/nll
FAMILY = {
    "dft": ["dft/weight_mean"],
    "asft": ["asft/kl", "dft/weight_mean"],
    "prob": ["prob/weight_mean"],
    "gift": ["gift/target_mass"],
    "eaft": ["eaft/weight_mean"],
    "deft": ["deft/gate_mean"],
    "trsft": ["trsft/bounded_frac"],
    "eksft": ["eksft/removed_frac", "eksft/entropy", "eksft/kl"],
    FORWARD_KL: ["kl/ref_kl"],
}


def fit(tmp_path, files, objective: str, *extra: str):
    name, *init = objective.split()
    args = tiny_fit_args(
        tmp_path, files, 3, f"--model.objective={name}", *init, "--data.max_length=192", *extra
    )
    return run_cli(["fit", *args])


@pytest.mark.parametrize("objective", sorted(FAMILY))
def test_objective_trains_tiny_through_the_cli_and_logs_its_tags(tmp_path, arithmetic_files, objective):
    cli = fit(tmp_path, arithmetic_files, objective)
    assert type(cli.model.objective) is objective_class(objective.split()[0])
    assert cli.trainer.global_step == 3
    logged = scalars(tmp_path)
    for tag in ["train/loss", "train/nll", "val/loss", *FAMILY[objective]]:
        assert sorted(logged.get(tag, {})) == ([0, 3] if tag == "val/loss" else [1, 2, 3]), tag
        assert all(math.isfinite(v) for v in logged[tag].values()), tag
    for tag in FAMILY[objective]:
        assert max(abs(v) for v in logged[tag].values()) > 1e-6, tag  # the signal is really computed


def test_forward_and_reverse_kl_runs_differ(tmp_path, arithmetic_files):
    forward = fit(
        tmp_path / "f", arithmetic_files, "psft_lightning.objectives.KL --model.objective.direction=forward"
    )
    reverse = fit(tmp_path / "r", arithmetic_files, "kl")
    assert forward.model.objective.direction == "forward" and reverse.model.objective.direction == "reverse"
    f, r = scalars(tmp_path / "f")["kl/ref_kl"], scalars(tmp_path / "r")["kl/ref_kl"]
    assert f[1] == r[1] == 0.0  # step 1: the policy still is the reference
    assert abs(f[3] - r[3]) > 1e-7


@pytest.mark.parametrize("name", ["dft", "asft", "prob", "gift", "eaft", "deft", "trsft", "eksft"])
def test_shipped_config_names_its_objective_on_the_embedded_model(name):
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))
    assert config["model"]["model"] == "smollm2-135m-instruct"
    cls = objective_class(config["model"]["objective"]["class_path"])
    assert cls is objective_class(name)
    assert config["trainer"]["logger"]["init_args"]["name"] == name
