"""A study survives interruption: killed or stopped with SIGTERM, the same ``psft study`` command continues
it, keeping the runs it finished; other settings are refused; ``--restart`` starts afresh. The runs go
through the real command (a subprocess) on a ``#### N`` dataset without a final field."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psft_lightning.errors import ConfigError
from psft_lightning.owned import record as record_owned
from psft_lightning.study import progress, runs
from psft_lightning.study.budgets import BUDGETS
from psft_lightning.study.runs import STUDY, STUDY_ENTRIES, RunPlan, run
from psft_lightning.study.selection import Task

ROOT = Path(__file__).resolve().parent.parent
# the objectives the page's verdicts compare (the study trains whatever <root>/configs selects)
CONFIGS = ("sft.yaml", "sft_kl.yaml", "psft.yaml", "psft_warmup.yaml")
PSFT = Path(sys.executable).with_name("psft")  # the console script pip installed beside this Python


def gsm8k_root(root: Path) -> Path:
    """A repository of four objectives' configs, the bundled OOD sets and a grade-school-math-style
    dataset: the answer only at the end of the completion (``#### 78``), no final field."""
    (root / "configs").mkdir(parents=True)
    for name in CONFIGS:
        shutil.copy(ROOT / "configs" / name, root / "configs" / name)
    shutil.copytree(ROOT / "data" / "ood", root / "data" / "ood")
    rows = []
    for line in (ROOT / "data" / "arithmetic" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:40]:
        row = json.loads(line)
        answer = row["answer"].replace(f"The answer is {row['final']}.", f"#### {row['final']}")
        rows.append({"question": row["question"], "answer": answer})
    (root / "gsm").mkdir()
    for split, part in (("train", rows[:20]), ("dev", rows[20:28]), ("test", rows[28:])):
        text = "".join(json.dumps(r) + "\n" for r in part)
        (root / "gsm" / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return root


def study_args(root: Path, out: Path) -> list[str]:
    return [
        "study",
        "--budget",
        "test",
        "--model",
        "tiny",
        "--seeds",
        "0",
        "--root",
        str(root),
        *("--train-file", "gsm/train.jsonl", "--dev-file", "gsm/dev.jsonl", "--test-file", "gsm/test.jsonl"),
        "--answer-pattern",
        r"#### (\S+)",
        "--runs-dir",
        str(out / "runs"),
        "--out",
        str(out / "results.md"),
    ]


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w", encoding="utf-8") as handle:
        return subprocess.Popen([str(PSFT), *args], stdout=handle, stderr=subprocess.STDOUT)


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    """Poll until ``path`` exists while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} never came (exit {process.wait()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    """The study killed (SIGKILL) once its first run is recorded, stopped with SIGTERM once its second
    is, then run to the end: the same command each time."""
    tmp = tmp_path_factory.mktemp("continued")
    root, out = gsm8k_root(tmp / "repo"), tmp / "out"
    args, seed0 = study_args(root, out), out / "runs" / "seed0"
    logs = [tmp / f"{i}.log" for i in range(3)]
    killed = start(args, logs[0])
    wait_for(seed0 / "base.json", killed, logs[0])
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    base = snapshot(seed0 / "base.json")
    stopped = start(args, logs[1])
    wait_for(seed0 / "ce_lr0.001.json", stopped, logs[1])
    stopped.send_signal(signal.SIGTERM)
    code = stopped.wait(timeout=600)
    first_runs = {"base": base, "ce_lr0.001": snapshot(seed0 / "ce_lr0.001.json")}
    finished = subprocess.run([str(PSFT), *args], capture_output=True, text=True, timeout=1800)
    texts = [log.read_text(encoding="utf-8") for log in logs[:2]]
    return root, out, args, code, first_runs, texts, finished


def test_a_stopped_study_continues_and_keeps_its_finished_runs(continued):
    _, out, _, _, first_runs, texts, finished = continued
    assert finished.returncode == 0, finished.stderr[-3000:]
    for name, (content, mtime) in first_runs.items():
        assert snapshot(out / "runs" / "seed0" / f"{name}.json") == (content, mtime)
        assert f"{name} seed 0: kept, finished by an earlier run" in finished.stderr
    assert "base seed 0: kept" in texts[1]  # the SIGKILLed study's half-done run was not kept
    record = json.loads((out / "runs" / "results.json").read_text(encoding="utf-8"))
    assert record["base"] == json.loads(first_runs["base"][0])
    wall = record["base"]["wall_seconds"] + record["grid"]["ce"][0]["wall_seconds"]
    assert record["seconds"] > wall  # the kept runs' recorded time counts in the study's


def test_a_dataset_without_a_final_field_is_studied_from_its_completions(continued):
    _, out, _, _, _, _, finished = continued
    record = json.loads((out / "runs" / "results.json").read_text(encoding="utf-8"))
    assert record["task"]["answer_pattern"] == r"#### (\S+)"
    assert sorted(record["chosen"]) == ["ce", "kl", "psft", "psft_warmup"]
    assert set(record["rl"]) == {"ce", "psft"}
    for name, chosen in record["chosen"].items():
        assert len(chosen[0]["test_greedy"]) == BUDGETS["test"].scoring_of(name)["num_test"]
    page = (out / "results.md").read_text(encoding="utf-8")
    assert f"wrote {out / 'results.md'}" in finished.stdout and "| SFT |" in page


def test_sigterm_says_to_run_the_same_command_again(continued):
    *_, code, _, texts, _ = continued
    last = [line for line in texts[1].splitlines() if line.startswith("psft: ")][-1]
    assert code == 143
    assert last.startswith("psft: psft study stopped by SIGTERM: the runs it finished are kept in ")
    assert "run the same command again to continue" in last and "--ckpt_path" not in last


def test_other_settings_are_refused_before_any_model_work(continued, monkeypatch, capsys):
    from psft_lightning.cli import main

    _, out, args, *_ = continued
    monkeypatch.setattr(runs, "run_from_config", no_model)
    changed = [*args[:6], "0", "1", *args[7:]]
    with pytest.raises(SystemExit) as done:
        main(changed)
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert f"--runs-dir {out / 'runs'} holds a study with other settings (--seeds was [0], now [0, 1])" in err
    assert "--restart" in err


def no_model(*args, **kwargs):
    raise AssertionError("a run started")


def test_a_finished_run_is_returned_and_an_unfinished_one_is_redone(tmp_path, monkeypatch):
    plan = RunPlan("ce", 1e-3, "tiny", 0, tmp_path / "seed0")
    task, budget = Task(), BUDGETS["test"]
    (tmp_path / "seed0" / plan.name).mkdir(parents=True)
    (tmp_path / "seed0" / plan.name / "events.partial").write_text("half a run", encoding="utf-8")

    def redo(*args, **kwargs):
        assert not (tmp_path / "seed0" / plan.name).exists()  # the half run's folder went first
        raise RuntimeError("redone")

    monkeypatch.setattr(runs, "run_from_config", redo)
    with pytest.raises(RuntimeError, match="redone"):
        run(plan, budget, task, ROOT)
    progress.write_json(tmp_path / "seed0" / f"{plan.name}.json", {"wall_seconds": 7.0})
    monkeypatch.setattr(runs, "run_from_config", no_model)
    assert run(plan, budget, task, ROOT) == {"wall_seconds": 7.0}
    assert progress.recorded_seconds(tmp_path, {}) == 7.0
    # a GRPO follow-up counts while it is kept: made with the budget's GRPO settings
    follow_up = {"settings": {"seed": 0, "lr": 1e-5}, "grpo_seconds": 2.0, "after": {"wall_seconds": 3.0}}
    progress.write_json(tmp_path / "rl_ce.json", follow_up)
    assert progress.recorded_seconds(tmp_path, {"lr": 1e-5}) == 12.0
    assert progress.recorded_seconds(tmp_path, {"lr": 2e-5}) == 7.0  # to be redone: not counted


def test_begin_continues_the_same_settings_refuses_others_and_restart_removes_only_the_studys(tmp_path):
    runs_dir = tmp_path / "runs"
    now = {"--seeds": [0], "--train-file contents": "ab"}
    assert progress.begin_study(runs_dir, STUDY, now, restart=False) is False
    record_owned(runs_dir, STUDY, STUDY_ENTRIES)
    (runs_dir / "seed0").mkdir()
    (runs_dir / "notes.txt").write_text("mine", encoding="utf-8")  # not the study's
    assert progress.begin_study(runs_dir, STUDY, now, restart=False) is True
    assert (runs_dir / "seed0").is_dir()
    other = {"--seeds": [0], "--train-file contents": "cd"}
    message = 'holds a study with other settings (--train-file contents was "ab", now "cd")'
    with pytest.raises(ConfigError, match=re.escape(message)):
        progress.begin_study(runs_dir, STUDY, other, restart=False)
    assert progress.begin_study(runs_dir, STUDY, other, restart=True) is False
    assert sorted(p.name for p in runs_dir.iterdir()) == [".psft-manifest.json", "notes.txt", "study.json"]
    assert json.loads((runs_dir / "study.json").read_text(encoding="utf-8")) == other
    (runs_dir / "study.json").write_text("{half", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a study's settings .*--restart"):
        progress.begin_study(runs_dir, STUDY, other, restart=False)


def test_a_finished_study_continues_with_grpo_at_more_seeds_without_training_again(continued):
    _, out, args, *_ = continued
    seed0, runs_dir = out / "runs" / "seed0", out / "runs"
    trained = {path.name: snapshot(path) for path in seed0.glob("*.json")}
    first = {name: snapshot(runs_dir / f"rl_{name}.json") for name in ("ce", "psft")}
    began = snapshot(runs_dir / "machine.json")  # measured when the study began, not again
    more = subprocess.run([str(PSFT), *args, "--rl", "0", "1"], capture_output=True, text=True, timeout=900)
    assert more.returncode == 0, more.stderr[-3000:]
    assert {path.name: snapshot(path) for path in seed0.glob("*.json")} == trained  # nothing re-trained
    assert {name: snapshot(runs_dir / f"rl_{name}.json") for name in ("ce", "psft")} == first
    record = json.loads((runs_dir / "results.json").read_text(encoding="utf-8"))
    assert snapshot(runs_dir / "machine.json") == began and record["machine"] == json.loads(began[0])
    for name in ("ce", "psft"):
        (later,) = record["rl_seeds"][name]
        assert later["seed"] == 1 and later["settings"] == {"seed": 1, **BUDGETS["test"].rl}
        assert later["from"] == record["rl"][name]["from"]
        assert len(later["steps"]) == BUDGETS["test"].rl["steps"]
        assert (runs_dir / f"rl_{name}_seed1.json").is_file()
    page = (out / "results.md").read_text(encoding="utf-8")
    assert "| SFT -> GRPO (seed 1) from ce_lr" in page and "| PSFT -> GRPO (seed 0) from psft_lr" in page
