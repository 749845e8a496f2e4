"""A run is never lost and never silently wrong, through the real ``psft`` command: divergence stops
before the update (exit 3), SIGTERM/SIGINT stop in bounded time (143/130), a kill costs at most the
steps since the periodic last.ckpt, and a resume whose data order changed is refused or flagged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml
from test_misuse import TINY, assert_user_error, fit_args, psft, scalars

from psft_lightning.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[1]


def saving_every_step(args: list[str], tmp_path: Path) -> list[str]:
    """``args`` with configs/tiny.yaml's periodic last.ckpt every optimizer step instead of every 4."""
    text = Path(TINY).read_text()
    assert "every_n_steps: 4," in text
    path = tmp_path / "tiny_every_step.yaml"
    path.write_text(text.replace("every_n_steps: 4,", "every_n_steps: 1,"))
    return [str(path) if arg == TINY else arg for arg in args]


def last_ckpt(root: Path) -> Path:
    return root / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


def saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def all_finite(checkpoint: dict) -> bool:
    return all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def one_error(proc, code: int) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("psft: error:") == 1, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------- divergence
DIVERGING = ["--model.objective=ce", "--trainer.gradient_clip_val=null", "--trainer.max_steps=3"]


def test_a_nan_gradient_stops_before_the_update_and_keeps_the_last_finite_checkpoint(
    tmp_path, arithmetic_files
):
    args = fit_args(tmp_path, arithmetic_files, *DIVERGING, "--model.lr=1e30")
    proc = psft(*saving_every_step(args, tmp_path))
    one_error(proc, EXIT_DIVERGED)
    assert "training diverged at step 2 (objective ce): the gradient norm is nan" in proc.stderr
    assert "the step was not applied" in proc.stderr
    assert f"newest finite checkpoint is {last_ckpt(tmp_path)} (step 1)" in proc.stderr
    checkpoint = saved(last_ckpt(tmp_path))
    assert checkpoint["global_step"] == 1 and all_finite(checkpoint)


def test_weights_an_update_made_non_finite_are_never_saved(tmp_path, arithmetic_files):
    # lr 1e39 is inf in fp32: step 1's gradients are finite, its update is not
    args = fit_args(tmp_path, arithmetic_files, *DIVERGING, "--model.lr=1e39")
    proc = psft(*saving_every_step(args, tmp_path))
    one_error(proc, EXIT_DIVERGED)
    assert "training diverged at step 1 (objective ce): its update made weights non-finite" in proc.stderr
    assert "No checkpoint was written" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_max_skipped_steps_skips_then_stops(tmp_path, arithmetic_files):
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, *DIVERGING, "--model.lr=1e30", "--trainer.max_steps=4"),
        "--trainer.callbacks+=psft_lightning.callbacks.StopOnNonFinite",
        "--trainer.callbacks.max_skipped_steps=1",
    )
    one_error(proc, EXIT_DIVERGED)
    assert "step 2: the gradient norm is nan; the step is skipped, no update (1 of max_skipped_steps 1)" in (
        proc.stderr
    )
    assert "training diverged at step 3 (objective ce)" in proc.stderr


# ------------------------------------------------------------------------- accumulation, signals
@pytest.mark.parametrize("value", ["0", "-1"])
def test_accumulate_grad_batches_below_one_is_refused(tmp_path, arithmetic_files, value):
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, f"--trainer.accumulate_grad_batches={value}"), timeout=120
    )
    assert_user_error(
        proc, f"trainer.accumulate_grad_batches must be >= 1 (micro-batches per optimizer step), got {value}"
    )


def test_sigterm_exits_143_within_the_bound_when_the_step_never_ends(tmp_path, arithmetic_files):
    started = time.monotonic()
    proc = psft(
        *saving_every_step(fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=6"), tmp_path),
        "--trainer.callbacks+=psft_sigterm.SigtermAt",
        "--trainer.callbacks.step=2",
        "--trainer.callbacks.sleep_s=60",  # step 3 hangs after the signal
        env={"PSFT_STOP_TIMEOUT": "2"},
    )
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr[-3000:]
    assert (
        "stopped by SIGTERM at step 2: the optimizer step did not end within 2 s of the signal" in proc.stderr
    )
    assert time.monotonic() - started < 55  # did not wait for the step
    assert saved(last_ckpt(tmp_path))["global_step"] == 2  # the periodic one, untouched


def test_first_sigint_saves_once_and_exits_130_and_last_resumes(tmp_path, arithmetic_files):
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=6", "--trainer.val_check_interval=3"),
        "--trainer.callbacks+=psft_sigterm.SigtermAt",
        "--trainer.callbacks.step=2",
        "--trainer.callbacks.signal_name=SIGINT",
    )
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"stopped by SIGINT (Ctrl-C) at step 3: saved {last_ckpt(tmp_path)}" in proc.stderr
    assert saved(last_ckpt(tmp_path))["global_step"] == 3
    resumed = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=6"), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert saved(last_ckpt(tmp_path))["global_step"] == 6


def test_a_second_sigint_stops_at_once_without_saving(tmp_path, arithmetic_files):
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=6"),
        "--trainer.callbacks+=psft_sigterm.SigtermAt",
        "--trainer.callbacks.step=2",
        "--trainer.callbacks.signal_name=SIGINT",
        "--trainer.callbacks.times=2",
    )
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-3000:]
    assert "stopped at once by a second SIGINT (Ctrl-C) at step 2: nothing was saved" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))  # tiny saves every 4 steps: none yet


def test_sigint_before_training_exits_130_without_a_checkpoint(tmp_path, arithmetic_files):
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=4"),
        "--trainer.callbacks+=psft_sigterm.SigtermAt",
        "--trainer.callbacks.step=-1",
        "--trainer.callbacks.signal_name=SIGINT",
    )
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "stopped by SIGINT (Ctrl-C) at step 0: nothing was saved" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------------------ periodic last.ckpt
def test_a_kill_costs_only_the_steps_since_the_periodic_last_ckpt(tmp_path, arithmetic_files):
    killed = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=7"),
        "--trainer.callbacks+=psft_sigterm.KillAt",
        "--trainer.callbacks.step=5",
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert saved(last_ckpt(tmp_path))["global_step"] == 4  # configs/tiny.yaml: every 4 steps
    resumed = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=7"), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 4)" in resumed.stderr
    assert saved(last_ckpt(tmp_path))["global_step"] == 7  # the final save still comes after a periodic one


@pytest.mark.parametrize(
    "config", sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))
)
def test_every_shipped_config_saves_last_ckpt_periodically(config):
    callbacks = yaml.safe_load((REPO / "configs" / config).read_text())["trainer"]["callbacks"]
    [periodic] = [c for c in callbacks if c["class_path"] == "psft_lightning.callbacks.PeriodicCheckpoint"]
    [last] = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert periodic["init_args"]["every_n_steps"] in (4, 16, 64) and last["init_args"]["save_last"] is True
    assert "every_n_train_steps" not in last["init_args"]  # Lightning's skips the final last.ckpt


# ------------------------------------------------------------------------------------ exact resume
@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (["--data.batch_size=4"], "batch_size: checkpoint 2, this run 4"),
        (["--trainer.accumulate_grad_batches=2"], "accumulate_grad_batches: checkpoint 1, this run 2"),
        (["--data.seed=1"], "seed: checkpoint 0, this run 1"),
        ("other file", "data.train_files: checkpoint ["),
        ("edited file", "has other contents or tokenisation"),
    ],
)
def test_a_resume_with_another_data_order_is_refused(tmp_path, arithmetic_files, write_jsonl, change, phrase):
    first = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    files = arithmetic_files
    if change == "other file":
        files = (
            write_jsonl("other.jsonl", [{"question": f"{i}+1?", "answer": f"{i + 1}"} for i in range(24)]),
            files[1],
        )
    if change == "edited file":
        Path(files[0]).write_text(Path(files[0]).read_text().replace("1", "2", 1))
    extra = change if isinstance(change, list) else []
    proc = psft(*fit_args(tmp_path, files, "--trainer.max_steps=4", *extra), "--ckpt_path=last")
    assert_user_error(proc, "Cannot resume exactly", phrase, "data.allow_inexact_resume: true")
    assert saved(last_ckpt(tmp_path))["global_step"] == 2


def test_allow_inexact_resume_continues_with_one_warning(tmp_path, arithmetic_files):
    first = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=4", "--data.batch_size=4"),
        "--data.allow_inexact_resume=true",
        "--ckpt_path=last",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("the data position is not exact") == 1
    assert "batch_size: checkpoint 2, this run 4" in proc.stderr
    assert saved(last_ckpt(tmp_path))["global_step"] == 4


# ------------------------------------------------------------------------------- misuse siblings
def test_sigterm_during_a_validation_saves_at_once_and_resumes_exactly(tmp_path, arithmetic_files):
    common = ["--trainer.max_steps=6", "--trainer.val_check_interval=3"]
    straight = psft(*fit_args(tmp_path / "a", arithmetic_files, *common))
    assert straight.returncode == 0, straight.stderr[-3000:]
    root = tmp_path / "b"
    stopped = psft(
        *fit_args(root, arithmetic_files, *common),
        "--trainer.callbacks+=psft_sigterm.SigtermAt",
        "--trainer.callbacks.step=3",
        "--trainer.callbacks.in_validation=true",  # the validation after step 3
    )
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert f"stopped by SIGTERM at step 3: saved {last_ckpt(root)}" in stopped.stderr  # not after step 4
    resumed = psft(*fit_args(root, arithmetic_files, *common), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [expected] = scalars(tmp_path / "a" / "tiny" / "version_0", "train/loss")
    first, second = scalars(root / "tiny" / "version_0", "train/loss")
    assert {**first, **second} == expected


def test_a_checkpoint_past_max_steps_is_refused(tmp_path, arithmetic_files):
    first = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=3"))
    assert first.returncode == 0, first.stderr[-3000:]
    proc = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=2"), "--ckpt_path=last")
    assert_user_error(proc, "is at step 3 and trainer.max_steps is 2: nothing is left to train")


def test_a_bad_stop_timeout_fails_before_training(tmp_path, arithmetic_files):
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=1"), env={"PSFT_STOP_TIMEOUT": "0"}
    )
    assert_user_error(proc, "PSFT_STOP_TIMEOUT must be > 0 seconds, got '0'")
