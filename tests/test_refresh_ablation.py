"""PSFT's refresh ablation: ``OldPolicy(refresh_every_n_steps="never")`` snapshots once and never again (in
training, across a checkpoint, from YAML), and the study's sweep table. The sweep through the whole study
on the tiny model is tests/test_reproduce.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_cli import scalars
from test_module import run
from test_module import scalars as step_scalars
from tiny_run import tiny_fit_args

from psft_lightning.callbacks import OldPolicy
from psft_lightning.cli import run_cli
from psft_lightning.errors import ConfigError
from psft_lightning.module import PSFTModule
from psft_lightning.study.budgets import BUDGETS
from psft_lightning.study.refresh import REFRESH_SWEEP, interval, refresh_rows


def test_never_snapshots_once_at_the_first_step_and_keeps_that_denominator(tmp_path):
    old = OldPolicy(refresh_every_n_steps="never")
    trainer, _ = run(tmp_path, "psft", max_steps=4, tb=True, callbacks=[old], lr=1e-2)
    metrics = step_scalars(trainer.logger.log_dir)
    assert metrics["psft/refreshes"] == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert old.last_refresh_step == 0 and old.refreshes == 1
    ratio = metrics["psft/ratio_mean"]
    assert ratio[0] == 1.0  # the one snapshot is the policy at step 0
    assert all(abs(ratio[step] - 1.0) > 1e-4 for step in (1, 2, 3))  # an interval of 2 would reset at 2
    assert [old.is_due(step, 0) for step in (0, 1, 8, 1000)] == [False] * 4


def test_never_survives_a_checkpoint_and_refuses_a_lookahead():
    module = PSFTModule("tiny", "psft")
    module.configure_model()
    old = OldPolicy(refresh_every_n_steps="never")
    old.on_fit_start(None, module)
    assert old.is_due(3, 3)  # nothing held yet: due at the first step that uses it
    old.old.refresh(3, coming=lambda: ())
    state = old.state_dict()
    assert state["refresh_every_n_steps"] == "never" and state["last_refresh_step"] == 3
    restored = OldPolicy(refresh_every_n_steps="never")
    restored.load_state_dict(state)
    restored.on_fit_start(None, module)
    assert restored.refreshes == 1 and not any(restored.is_due(step, 3) for step in (3, 4, 11, 35))
    with pytest.raises(ConfigError, match="refresh_every_n_steps: never needs mode: snapshot"):
        OldPolicy(refresh_every_n_steps="never", mode="lookahead")
    for bad in ("sometimes", 0, 2.5, True):
        with pytest.raises(ConfigError, match=r"refresh_every_n_steps must be >= 1, got .*'never'"):
            OldPolicy(refresh_every_n_steps=bad)


def test_never_from_yaml_through_the_cli(tmp_path, arithmetic_files):
    config = tmp_path / "never.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: psft_lightning.callbacks.OldPolicy\n"
        "      init_args: {refresh_every_n_steps: never}\n"
    )
    args = tiny_fit_args(tmp_path, arithmetic_files, 3, f"--config={config}", "--data.max_length=192")
    cli = run_cli(["fit", *args])
    old = next(c for c in cli.trainer.callbacks if isinstance(c, OldPolicy))
    assert old.refresh_every_n_steps == "never" and old.refreshes == 1
    assert scalars(tmp_path)["psft/refreshes"] == {1: 1.0, 2: 1.0, 3: 1.0}


def test_sweep_intervals_and_their_runs():
    assert REFRESH_SWEEP == (1, 2, 8, 32, "never")
    assert [interval(v) for v in ("1", "32", "never")] == [1, 32, "never"]
    for bad in ("0", "-2", "sometimes", "1.5"):
        with pytest.raises(ValueError, match="a refresh interval is a step count >= 1 or 'never'"):
            interval(bad)
    budget = BUDGETS["standard"]  # interval 8 is the study's own PSFT run, reused
    assert replace(budget, refresh_sweep=REFRESH_SWEEP).runs() == budget.runs() + 4
    assert replace(budget, refresh_sweep=REFRESH_SWEEP).estimate() > budget.estimate()


def test_sweep_table_rows():
    record = {
        "interval": "never",
        "snapshots": 1,
        "selected": {"epoch": 2, "dev_accuracy": 0.25},
        "test_greedy": [1.0, 0.0, 0.0, 1.0],
        "metrics": {"eval/entropy": 0.4567, "ood/drift_nll": 1.2345},
        "wall_seconds": 12.4,
    }
    lines = refresh_rows([{**record, "interval": 8, "snapshots": 4}, record])
    assert lines[0].startswith("| refresh every | snapshots | selected epoch | test acc | dev acc | entropy")
    assert lines[2:] == [
        "| 8 steps | 4 | 2 | 0.500 | 0.250 | 0.457 | 1.234 | 12 |",
        "| never | 1 | 2 | 0.500 | 0.250 | 0.457 | 1.234 | 12 |",
    ]
