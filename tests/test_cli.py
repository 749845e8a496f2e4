"""The ``psft`` command end to end on configs/tiny.yaml: fit per objective, validate, --print_config,
config typos, objective selection (name, class_path, entry point) and error exits."""

from __future__ import annotations

import glob
import math
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_run import tiny_fit_args

from psft_lightning.cli import main, run_cli
from psft_lightning.errors import ConfigError
from psft_lightning.objectives import CE, ENTRY_POINT_GROUP, KL, PSFT, PSFTWarmup

TESTS = Path(__file__).resolve().parent
PLUGINS = str(TESTS / "plugins")


@pytest.fixture
def args(tmp_path, arithmetic_files):
    """``fit``/``validate`` arguments: tiny.yaml, 2 steps, outputs and small data under tmp_path."""
    return tiny_fit_args(tmp_path, arithmetic_files, 2, "--data.max_length=192")


def scalars(root, version: int = 0, run: int = 0) -> dict[str, dict[int, float]]:
    """Scalars of the ``run``-th process that logged into ``version_<version>`` (a resume logs there too)."""
    files = glob.glob(f"{root}/tiny/version_{version}/events.out.tfevents.*")
    # names end in <time>.<host>.<pid>.<writer counter>: in numeric order (a counter of 10 after 9)
    event_file = sorted(
        files, key=lambda name: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    )[run]
    acc = EventAccumulator(event_file, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize(
    ("objective", "cls"), [("ce", CE), ("kl", KL), ("psft", PSFT), ("psft_warmup", PSFTWarmup)]
)
def test_fit_each_objective_writes_checkpoint_and_events(tmp_path, args, objective, cls):
    cli = run_cli(["fit", *args, f"--model.objective={objective}"])
    assert type(cli.model.objective) is cls
    assert cli.trainer.global_step == 2
    (ckpt,) = glob.glob(f"{tmp_path}/tiny/version_0/checkpoints/last.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 2
    assert not any(k.startswith("reference.") for k in state["state_dict"])
    metrics = scalars(tmp_path)
    assert sorted(metrics["train/loss"]) == [1, 2]  # x-axis: optimizer steps completed
    assert all(math.isfinite(v) for v in metrics["train/loss"].values())
    assert math.isfinite(metrics["val/loss"][2])
    assert ("kl/ref_kl" in metrics) == (objective == "kl")
    assert ("psft/ratio_mean" in metrics) == (objective == "psft")  # psft_warmup: CE for 10 steps


def test_validate_and_resume_from_a_checkpoint(tmp_path, args):
    fit = run_cli(["fit", *args, "--model.objective=ce"])
    fitted = float(fit.trainer.callback_metrics["val/loss"])
    assert scalars(tmp_path)["val/loss"][2] == pytest.approx(fitted, rel=1e-6)  # after 2 optimizer steps
    last = f"{tmp_path}/tiny/version_0/checkpoints/last.ckpt"
    validate = run_cli(["validate", *args, "--model.objective=ce", f"--ckpt_path={last}"])
    assert float(validate.trainer.callback_metrics["val/loss"]) == pytest.approx(fitted, rel=1e-5)
    resumed = run_cli(["fit", *args, "--model.objective=ce", "--trainer.max_steps=3", f"--ckpt_path={last}"])
    assert resumed.trainer.global_step == 3
    # the resumed run logs into the checkpoint's version folder: optimizer steps completed on the x-axis
    assert sorted(scalars(tmp_path, version=0, run=-1)["train/loss"]) == [3]
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["version_0", "version_1"]  # 1: validate


def test_print_config_is_complete_and_runs_again(tmp_path, args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *args, "--trainer.max_steps=1", "--model.objective.clip_high=0.3", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    for line in (
        "model: tiny",
        "class_path: psft_lightning.objectives.PSFT",
        "clip_high: 0.3",
        "max_steps: 1",
        "prompt: question",
        "refresh_every_n_steps: 2",
    ):
        assert line in printed, line
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    cli = run_cli(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 1
    assert cli.model.objective.clip_high == 0.3
    assert cli.datamodule.max_length == 192
    assert {"OldPolicy", "ModelCheckpoint"} <= {type(c).__name__ for c in cli.trainer.callbacks}


@pytest.mark.parametrize("typo", ["--trainer.max_stepz=3", "--data.batchsize=3"])
def test_config_typo_on_the_command_line_exits_2_naming_the_key(args, capsys, typo):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *args, typo])
    assert exit_info.value.code == 2
    assert typo.split("=")[0].lstrip("-").split(".")[1] in capsys.readouterr().err


def test_config_typo_in_yaml_exits_2_naming_the_key(tmp_path, args, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--config", str(bad)])
    assert exit_info.value.code == 2
    assert "batchsize" in capsys.readouterr().err


def test_unknown_objective_lists_the_known_names(args, capsys):
    with pytest.raises(ConfigError, match=r"Unknown objective 'psftt'. Did you mean 'psft'\?"):
        run_cli(["fit", *args, "--model.objective=psftt"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--model.objective=nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    known = "asft, ce, deft, dft, eaft, eksft, gift, kl, prob, psft, psft_warmup, trsft"
    assert f"psft: error: Unknown objective 'nope'. Known objectives: {known}." in err
    assert "Traceback" not in err
    # a misspelt class_path is refused while parsing, naming the key and the class
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                *args,
                "--model.objective=psft_lightning.objectives.PSFTT",
                "--model.objective.clip_low=0.1",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'Parser key "model.objective"' in err and "psft_lightning.objectives.PSFTT" in err


def test_custom_objective_by_class_path_with_init_args(tmp_path, args, monkeypatch, clean_registry):
    monkeypatch.syspath_prepend(PLUGINS)
    config = tmp_path / "focal.yaml"
    config.write_text(
        "model:\n  objective:\n    class_path: psft_focal.FocalNLL\n    init_args: {gamma: 0.5}\n"
    )
    cli = run_cli(["fit", *args, "--config", str(config), "--trainer.max_steps=1"])
    assert type(cli.model.objective).__name__ == "FocalNLL" and cli.model.objective.gamma == 0.5
    metrics = scalars(tmp_path)
    assert 0 < metrics["focal/weight"][1] < 1
    assert math.isfinite(metrics["train/loss"][1]) and metrics["train/loss"][1] > 0


def test_readme_objective_with_a_new_need_is_one_file(tmp_path, args, monkeypatch, clean_registry):
    """README's entropy-bonus objective: ``Needs(entropy=True)`` alone makes the step serve the entropy."""
    monkeypatch.syspath_prepend(PLUGINS)
    config = tmp_path / "entropy.yaml"
    config.write_text(
        "model:\n  objective:\n    class_path: psft_entropy.EntropyBonusSFT\n    init_args: {bonus: 0.5}\n"
    )
    run_cli(["fit", *args, "--config", str(config), "--trainer.max_steps=2"])
    metrics = scalars(tmp_path)
    for step in (1, 2):
        entropy = metrics["bonus/entropy"][step]
        assert entropy == pytest.approx(metrics["train/entropy"][step], rel=1e-6) and entropy > 1
        assert metrics["train/loss"][step] == pytest.approx(
            metrics["train/nll"][step] - 0.5 * entropy, rel=1e-5
        )


def test_custom_objective_by_entry_point_name(tmp_path, args, monkeypatch, clean_registry):
    info = tmp_path / "psft_focal_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: psft-focal-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nfocal = psft_focal:FocalNLL\nstrict_focal = psft_focal:StrictFocalNLL\n"
    )
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    cli = run_cli([*args, "--model.objective=focal"], run=False)
    assert type(cli.model.objective).__name__ == "FocalNLL" and cli.model.objective.gamma == 2.0
    assert cli.model.hparams["objective_name"] == "focal"
    with pytest.raises(ConfigError, match=r"'strict_focal' cannot be built from its name alone .*gamma"):
        run_cli([*args, "--model.objective=strict_focal"], run=False)


def test_console_script_prints_data_errors_without_traceback(tmp_path, args, capsys):
    (script,) = entry_points(group="console_scripts", name="psft")
    assert script.load() is main
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q"\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, f"--data.train_files={bad}"])  # one file: no list brackets needed
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"psft: error: {bad}:2: malformed JSON line" in err
    assert "Traceback" not in err
