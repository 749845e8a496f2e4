"""Exact resume (single process), a clean stop on SIGTERM and atomic checkpoint writes, on the tiny model."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tiny_run import subprocess_env

from psft_lightning.checkpointing import AtomicCheckpointIO
from psft_lightning.cli import main, run_cli
from psft_lightning.stopping import PREEMPTED_EXIT_CODE, Preempted

TINY_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")

OBJECTIVES = {
    "psft": [],  # configs/tiny.yaml: PSFT with OldPolicy(refresh_every_n_steps=2)
    "psft_warmup": [
        "--model.objective=psft_lightning.objectives.PSFTWarmup",
        "--model.objective.warmup_steps=3",  # CE for steps 0-2, the first snapshot at the resumed step 3
    ],
    "ce": ["--model.objective=psft_lightning.objectives.CE"],
    "psft_lora": ["--model.lora={r: 4, alpha: 8}"],  # pi_old is a snapshot of the adapters only
}


def fit_args(config: str, files: tuple[str, str], root: Path, *extra: str) -> list[str]:
    train, val = files
    return [
        f"--config={config}",
        f"--data.train_files=[{train}]",
        f"--data.val_files=[{val}]",
        "--data.batch_size=2",
        "--data.max_length=128",
        "--model.tiny_config={attention_dropout: 0.1}",  # dropout: the losses depend on the torch RNG
        "--trainer.max_steps=6",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        *extra,
    ]


class Recorder(L.Callback):
    """Per-step loss and draws of the Python, NumPy and torch generators; optionally SIGTERMs itself
    during optimizer step ``sigterm_at`` (as a scheduler would)."""

    def __init__(self, sigterm_at: int | None = None) -> None:
        self.sigterm_at = sigterm_at
        self.losses: dict[int, float] = {}
        self.draws: dict[int, tuple[float, float, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.draws[trainer.global_step] = (random.random(), float(np.random.rand()), float(torch.rand(())))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = float(outputs["loss"])


def run(args: list[str], recorder: Recorder, ckpt_path: str | None = None) -> L.Trainer:
    """Fit; a run the recorder SIGTERMs must stop with Preempted (the CLI's exit 143), others finish."""
    cli = run_cli(args, run=False)
    cli.trainer.callbacks.append(recorder)
    if recorder.sigterm_at is None:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    else:
        with pytest.raises(Preempted):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli.trainer


def only(record: dict, steps) -> dict:
    return {step: record[step] for step in steps}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_stop_and_resume_equals_straight_run(objective, tmp_path, arithmetic_files):
    extra = OBJECTIVES[objective]
    straight = Recorder()
    trainer = run(fit_args(TINY_YAML, arithmetic_files, tmp_path / "straight", *extra), straight)
    assert trainer.global_step == 6
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO  # the CLI's default

    root = tmp_path / "stopped"
    first = Recorder(sigterm_at=2)  # SIGTERM during step 2: step 2 completes, last.ckpt is saved
    trainer = run(fit_args(TINY_YAML, arithmetic_files, root, *extra), first)
    assert trainer.global_step == 3
    last = root / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["objective_name"] == objective.removesuffix("_lora")

    second = Recorder()
    trainer = run(fit_args(TINY_YAML, arithmetic_files, root, *extra), second, ckpt_path=str(last))
    assert trainer.global_step == 6
    assert first.losses == only(straight.losses, range(3))
    assert second.losses == only(straight.losses, range(3, 6))  # bit-identical
    assert second.draws == only(straight.draws, range(3, 6))
    assert len(set(straight.losses.values())) > 1


def test_sigterm_subprocess_saves_last_checkpoint_and_resumes(tmp_path, arithmetic_files):
    """``psft fit`` killed with SIGTERM (mid gradient accumulation) saves last.ckpt at the next step
    boundary and exits with 143; ``--ckpt_path`` continues from that step."""
    steps_dir = tmp_path / "steps"
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        textwrap.dedent(f"""\
            trainer:
              callbacks:
                - class_path: lightning.pytorch.callbacks.ModelCheckpoint
                  init_args: {{dirpath: {steps_dir}, every_n_train_steps: 2, save_top_k: 1, save_last: true}}
            """)
    )
    args = fit_args(TINY_YAML, arithmetic_files, tmp_path / "run", f"--config={callbacks}")
    args += ["--trainer.accumulate_grad_batches=2"]
    cmd = [sys.executable, "-m", "psft_lightning.cli", "fit", *args, "--trainer.max_steps=100000"]
    env = subprocess_env()
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not list(steps_dir.glob("epoch=*.ckpt")):  # training is under way
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == PREEMPTED_EXIT_CODE, output
    assert "resume with --ckpt_path last" in output
    last = steps_dir / "last.ckpt"
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 2 <= stopped_at < 100000

    recorder = Recorder()
    resume_args = [*args, f"--trainer.max_steps={stopped_at + 2}"]
    trainer = run(resume_args, recorder, ckpt_path=str(last))
    assert trainer.global_step == stopped_at + 2
    assert sorted(recorder.draws) == [stopped_at, stopped_at + 1]  # keyed by the step each batch starts


def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)

    class CrashesMidWrite(AtomicCheckpointIO):
        def write(self, checkpoint, f) -> None:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        CrashesMidWrite().save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["step"] == 1
    assert torch.equal(loaded["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def _write_then_block(path: str, marker: str) -> None:
    """Child process: save step 1, then block in the middle of writing step 2."""

    class BlocksMidWrite(AtomicCheckpointIO):
        def write(self, checkpoint, f) -> None:
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
            Path(marker).touch()
            time.sleep(600)

    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(8)}, path)
    BlocksMidWrite().save_checkpoint({"step": 2, "w": torch.zeros(8)}, path)


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    path, marker = tmp_path / "last.ckpt", tmp_path / "writing"
    proc = multiprocessing.get_context("fork").Process(
        target=_write_then_block, args=(str(path), str(marker))
    )
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.is_alive(), "the writer exited early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
    finally:
        proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.tmp-")]
    assert len(partial) == 1 and partial[0].read_bytes().endswith(b"half a checkpoint")
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["step"] == 1
    assert torch.equal(loaded["w"], torch.ones(8))


def test_resume_refuses_a_checkpoint_of_another_objective_or_model(tmp_path, arithmetic_files, capsys):
    root = tmp_path / "run"
    run_cli(["fit", *fit_args(TINY_YAML, arithmetic_files, root, "--trainer.max_steps=1")])
    ckpt = root / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    cases = {
        "--model.objective=psft_lightning.objectives.CE": "objective_name: checkpoint 'psft', this run 'ce'",
        "--model.tiny_config={hidden_size: 32}": "tiny_config: checkpoint {'attention_dropout': 0.1}, "
        "this run {'hidden_size': 32}",
        "--model.lora={r: 4}": "lora: checkpoint None, this run {'r': 4,",
    }
    for override, expected in cases.items():
        args = fit_args(TINY_YAML, arithmetic_files, root, override, f"--ckpt_path={ckpt}")
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("psft: error: The checkpoint"), err
        assert expected in err
    assert ckpt.read_bytes() == before


def test_failed_sharded_checkpoint_write_keeps_previous_checkpoint(tmp_path, arithmetic_files, monkeypatch):
    """FSDP2Strategy writes a sharded checkpoint beside its target and swaps it in when complete: a
    write that dies half-way (here at step 2's save) leaves step 1's checkpoint whole and resumable."""
    import lightning.pytorch.strategies.model_parallel as model_parallel
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    real_save = model_parallel._distributed_checkpoint_save
    calls = []

    def dies_on_second_save(state, path):
        calls.append(path)
        if len(calls) == 2:
            (Path(path) / "__0_0.distcp").write_bytes(b"half a shard")
            raise OSError("disk full")
        real_save(state, path)

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", dies_on_second_save)
    root = tmp_path / "run"
    args = fit_args(
        TINY_YAML,
        arithmetic_files,
        root,
        "--trainer.strategy={class_path: psft_lightning.strategies.FSDP2Strategy}",
        "--trainer.max_steps=2",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath=" + str(root / "ckpt"),
        "--trainer.callbacks.save_last=true",
        "--trainer.callbacks.save_top_k=0",
        "--trainer.callbacks.every_n_train_steps=1",
    )
    try:
        with pytest.raises(OSError, match="disk full"):
            run_cli(["fit", *args])
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    last = root / "ckpt" / "last.ckpt"
    assert [Path(p).name for p in calls] == ["last.ckpt.partial", "last.ckpt.partial"]
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == 1
    dcp_to_torch_save(last, tmp_path / "consolidated.pt")  # every shard of step 1 is there and readable
    assert any(k.startswith("policy.") for k in torch.load(tmp_path / "consolidated.pt")["state_dict"])
