"""What a new user runs into, through the real ``psft`` command: resume with ``last``, preemption,
errors in plugin arguments, small datasets, a changed schedule horizon, paths and log lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_run import subprocess_env

from psft_lightning.schedule import lr_factor
from psft_lightning.stopping import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
PSFT = str(Path(sys.executable).with_name("psft"))
PLUGINS = str(REPO / "tests" / "plugins")


def psft(
    *args: str, cwd: Path = REPO, timeout: int = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = subprocess_env(PYTHONPATH=PLUGINS, **(env or {}))
    return subprocess.run(
        [PSFT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def fit_args(root: Path, files: tuple[str, str], *extra: str) -> list[str]:
    train, val = files
    return [
        "fit",
        "--config",
        TINY,
        f"--data.train_files=[{train}]",
        f"--data.val_files=[{val}]",
        "--data.batch_size=2",
        "--data.max_length=128",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        *extra,
    ]


def scalars(folder: Path, tag: str) -> list[dict[int, float]]:
    """``tag``'s values by step, one dict per event file in ``folder`` (one file per process run)."""
    runs = []
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        runs.append({e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {})
    return runs


def assert_user_error(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "psft: error:" in proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr[-3000:]


def test_sigterm_exits_143_once_and_last_resumes_the_same_run(tmp_path, arithmetic_files):
    """SIGTERM: one checkpoint, no validation after it, exit 143; ``--ckpt_path last`` then finds it,
    logs into the same version folder and continues with bit-identical per-step losses."""
    common = ["--trainer.max_steps=6", "--trainer.val_check_interval=3"]
    straight = psft(*fit_args(tmp_path / "a", arithmetic_files, *common))
    assert straight.returncode == 0, straight.stderr[-3000:]

    root = tmp_path / "b"
    stopped = psft(
        *fit_args(root, arithmetic_files, *common),
        "--trainer.callbacks+=psft_sigterm.SigtermAt",
        "--trainer.callbacks.step=2",  # SIGTERM during step 2: it completes, last.ckpt at step 3
    )
    assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at step 3" in stopped.stderr
    checkpoints = root / "tiny" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt

    resumed = psft(*fit_args(root, arithmetic_files, *common), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoints / 'last.ckpt'} (step 3)" in resumed.stderr
    assert sorted(p.name for p in (root / "tiny").iterdir()) == ["version_0"]  # same version folder

    [expected] = scalars(tmp_path / "a" / "tiny" / "version_0", "train/loss")
    first, second = scalars(root / "tiny" / "version_0", "train/loss")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert first == {s: expected[s] for s in (1, 2, 3)}
    assert second == {s: expected[s] for s in (4, 5, 6)}
    [val_straight] = scalars(tmp_path / "a" / "tiny" / "version_0", "val/loss")
    val_first, _ = scalars(root / "tiny" / "version_0", "val/loss")
    assert 3 in val_straight and 3 not in val_first  # the stopped run did not validate after SIGTERM


def test_last_without_a_checkpoint_is_an_error_not_a_fresh_start(tmp_path, arithmetic_files):
    proc = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=2"), "--ckpt_path=last")
    assert_user_error(proc, "--ckpt_path last: this run has no checkpoint", "last*.ckpt")
    assert not (tmp_path / "tiny").exists()


def test_sigterm_during_the_sanity_check_stops_cleanly(tmp_path, arithmetic_files):
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=4"),
        "--trainer.callbacks+=psft_sigterm.SigtermAt",
        "--trainer.callbacks.step=-1",
    )
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "stopped by SIGTERM at step 0: nothing was saved" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_resume_with_more_steps_follows_the_new_schedule_and_says_so(tmp_path, arithmetic_files):
    lr_logged = ["--trainer.val_check_interval=3"]
    first = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=3", *lr_logged))
    assert first.returncode == 0, first.stderr[-3000:]
    second = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=6", *lr_logged), "--ckpt_path=last"
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "schedule over 6 steps; the checkpoint's schedule was over 3" in second.stderr
    _, lrs = scalars(tmp_path / "tiny" / "version_0", "train/lr")
    for step in (4, 5, 6):  # logged at the step count after the update: the lr of step index step-1
        expected = 1e-3 * lr_factor(
            step - 1, warmup_steps=1, total_steps=6, schedule="cosine", min_lr_ratio=0.1
        )
        assert lrs[step] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("extra", "yaml", "phrase"),
    [
        (["--model.objective.init_args.clip_high", "-0.5"], None, "clip_high must be >= 0, got -0.5"),
        ([], "OldPolicy", "refresh_every_n_steps must be >= 1, got 0"),
        ([], "KL", "beta must be >= 0, got -1"),
        (["--data.max_length=1"], None, "data.max_length must be >= 2, got 1"),
    ],
)
def test_bad_plugin_callback_and_data_arguments_are_one_line(tmp_path, arithmetic_files, extra, yaml, phrase):
    edits = {
        "OldPolicy": ("refresh_every_n_steps: 2", "refresh_every_n_steps: 0"),
        "KL": (
            "objectives.PSFT\n    init_args: {clip_low: 0.2, clip_high: 0.28}",
            "objectives.KL\n    init_args: {beta: -1}",
        ),
    }
    if yaml:
        old, new = edits[yaml]
        text = Path(TINY).read_text()
        assert old in text
        (tmp_path / "bad.yaml").write_text(text.replace(old, new))
        extra = [f"--config={tmp_path / 'bad.yaml'}"]
    proc = psft(*fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=1", *extra))
    assert_user_error(proc, phrase)
    assert proc.stderr.count("psft: error:") == 1


def test_objective_short_name_with_hyper_parameters(tmp_path, arithmetic_files):
    printed = psft(
        *fit_args(tmp_path, arithmetic_files),
        "--model.objective",
        "kl",
        "--model.objective.init_args.beta",
        "0.2",
        "--print_config",
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert "class_path: psft_lightning.objectives.kl.KL" in printed.stdout
    assert "beta: 0.2" in printed.stdout

    (tmp_path / "kl.yaml").write_text("model:\n  objective: kl\n")
    proc = psft(
        *fit_args(tmp_path, arithmetic_files, f"--config={tmp_path / 'kl.yaml'}"),
        "--model.objective.init_args.beta=0.2",
    )
    assert proc.returncode == 2
    assert "give its class: objective: {class_path: psft_lightning.objectives.kl.KL" in proc.stderr


def test_small_datasets_work_and_epoch_intervals_are_checked_before_model_work(tmp_path, write_jsonl):
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i + 1}"} for i in range(12)]
    train = write_jsonl("small.jsonl", rows)
    files = (train, train)
    ok = psft(*fit_args(tmp_path, files, "--trainer.max_steps=9", "--data.batch_size=4"))
    assert ok.returncode == 0, ok.stderr[-3000:]  # 3 steps per epoch; validation every 4 across epochs
    assert "step 8: val/loss" in ok.stderr

    epoch_mode = psft(
        *fit_args(tmp_path, files, "--data.batch_size=4", "--trainer.check_val_every_n_epoch=1")
    )
    assert_user_error(epoch_mode, "val_check_interval=4 is more than the 3 training micro-batches", "null")
    assert "before training" not in epoch_mode.stderr  # no validation ran before the check

    too_few = psft(*fit_args(tmp_path, files, "--data.batch_size=16"))
    assert_user_error(too_few, "12 training examples cannot fill one optimizer step of 16")
    assert "before training" not in too_few.stderr


def test_relative_data_paths_from_another_directory_are_explained(tmp_path):
    proc = psft("fit", "--config", TINY, cwd=tmp_path)
    assert_user_error(
        proc,
        "data.train_files: data/arithmetic/train.jsonl not found",
        f"working directory ({tmp_path})",
        f"it exists under {REPO}",
    )


def test_log_lines_once_per_run_and_validate_names_the_checkpoint_step(tmp_path, arithmetic_files):
    two = psft(
        *fit_args(tmp_path, arithmetic_files, "--trainer.max_steps=2", "--trainer.val_check_interval=2"),
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("step 0 (before training)") == 1
    assert two.stderr.count("step 2: val/loss") == 1
    assert two.stderr.count("train: 24 examples") == 1  # the data module's lines too
    checkpoint = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    validated = psft(*["validate", *fit_args(tmp_path, arithmetic_files)[1:]], f"--ckpt_path={checkpoint}")
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert "step 2: val/loss" in validated.stderr
    assert "step 0" not in validated.stderr
