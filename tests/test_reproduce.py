"""``psft study`` end to end on the tiny model (every objective, the lr grid, selection on dev, test
scoring, page and plots), its selection rule, a custom-format dataset, and scripts/plot_runs.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from scripts_module import load_script

from psft_lightning.errors import ConfigError, DataError
from psft_lightning.study.budgets import BUDGETS, LABELS
from psft_lightning.study.frontier import score
from psft_lightning.study.objectives import study_objectives
from psft_lightning.study.plots import read_scalars
from psft_lightning.study.runs import RunPlan, epoch_file, run
from psft_lightning.study.selection import Task, correct

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    page = load_script("reproduce").main(
        [
            "--budget",
            "test",
            "--out",
            str(out / "results.md"),
            "--runs-dir",
            str(out / "runs"),
            "--refresh-sweep",
        ]
    )
    record = json.loads((out / "runs" / "results.json").read_text(encoding="utf-8"))
    return out, page.read_text(encoding="utf-8"), record


def table_row(page: str, label: str) -> list[str]:
    row = next(line for line in page.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")][1:]


def test_the_study_runs_every_objective_through_the_grid_and_writes_the_page_and_plots(studied):
    out, page, record = studied
    budget = BUDGETS["test"]
    assert list(record["chosen"]) == study_objectives()
    for name in ("base", *study_objectives()):
        cells = table_row(page, LABELS[name])
        assert len(cells) == 10 and all(re.fullmatch(r"-?\d+\.\d{3}( ± \d+\.\d{3})?", c) for c in cells[3:9])
    for name, runs in record["grid"].items():
        assert [r["lr"] for r in runs] == list(budget.lrs.get(name, (budget.lr,)))
        for r in runs:  # one dev checkpoint per epoch; the test split scored once, at the selected one
            assert [c["epoch"] for c in r["checkpoints"]] == [1, 2]
            assert r["selected"]["dev_accuracy"] == max(c["dev_accuracy"] for c in r["checkpoints"])
            assert len(r["test_greedy"]) == len(r["test_avg_k"]) == budget.scoring_of(name)["num_test"]
    assert [r["seed"] for r in record["chosen"]["ce"]] == [0, 1] and len(record["chosen"]["dft"]) == 1
    assert (
        len(record["chosen"]["psft"][0]["test_greedy"]) == 6
        and len(record["chosen"]["dft"][0]["test_greedy"]) == 4
    )
    assert re.search(r"^\| DFT \| [+-]\d\.\d{3} \[", page, re.MULTILINE)  # paired on the 4 questions both had
    verdicts = re.findall(r"^\| \((\d)\) .* \| (yes|no|cannot decide) \|", page, re.MULTILINE)
    assert [n for n, _ in verdicts] == ["1", "2", "3", "4", "5"]  # (5): the RL follow-up
    assert verdicts[1][1] == "cannot decide"  # the tiny model's accuracy sits at the floor
    assert "| metric (the paper's) |" in page and "| IFEval | 73.94 | 54.42 |" in page
    # the grid table lists both lrs; the main table only the selected one (ties keep the first)
    assert page.count("| SFT | 0.001 |") == 2 and page.count("| PSFT | 0.003 |") == 1
    assert re.search(r"^PSFT, step \d+:$", page, re.MULTILINE)
    for name in ("train_entropy", "eval_entropy", "dev_accuracy", "train_loss", "psft_clip_frac"):
        assert (out / "results" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_every_epoch_of_sft_and_psft_is_a_frontier_point_and_claim_3_is_decided_on_them(studied):
    out, page, record = studied
    for name in ("ce", "psft"):
        for r in [*record["grid"][name], *record["chosen"][name][1:]]:
            assert [(p["epoch"], p["step"]) for p in r["points"]] == [(1, 8), (2, 16)]
            assert [p["x"] for p in r["points"]] == [c["dev_accuracy"] for c in r["checkpoints"]]
            for p in r["points"]:  # both sets at their budget sizes, per item
                assert len(p["items"]["ood/mc_acc"]) == 2 and len(p["items"]["ood/drift_nll"]) == 2
            chosen = next(p for p in r["points"] if p["step"] == r["selected"]["step"])
            assert r["metrics"]["ood/drift_nll"] == pytest.approx(
                score("ood/drift_nll", chosen["items"]["ood/drift_nll"])
            )
            # measured at each epoch end and not again at the final sets (the selected epoch's are kept)
            logged = read_scalars(r["folder"])
            assert [s for s, _ in logged["ood/drift_nll"]] == [8, 16] and len(logged["ood/if_strict"]) == 1
    assert all(not r["points"] for r in record["grid"]["dft"])  # off the frontier: the final sets only
    assert "## Claim 3 at equal learning: the frontier" in page
    assert "test split: the paper's protocol)" in page
    assert re.search(
        r"^\| drift NLL ↓ \| [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \| seed 0: ", page, re.MULTILINE
    )
    assert re.search(r"^\| \(3\) PSFT forgets less .* PSFT - SFT at matched dev accuracy", page, re.MULTILINE)
    assert (out / "results" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_entropy_is_recorded_per_step_with_its_epoch_boundaries(studied):
    out, page, record = studied
    for name in ("ce", "psft"):
        assert [r["seed"] for r in record["chosen"][name]] == [0, 1]
        for r in record["chosen"][name]:  # 16 rows / batch 2 = 8 steps per epoch, 2 epochs
            assert [s for s, _ in r["entropy"]["train"]] == list(range(1, 17))
            assert all(value > 0 for _, value in r["entropy"]["train"])
            assert [c["step"] for c in r["checkpoints"]] == [8, 16]
            assert [s for s, _ in r["entropy"]["probe"]] == [2, 4, 6, 8, 10, 12, 14, 16]  # entropy_every 2
    assert "epochs ending after steps 8, 16 (dotted)" in page
    assert (out / "results" / "entropy_over_epochs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_time_split_of_every_run_is_on_the_page(studied):
    _, page, record = studied
    parts = {"wall", "start-up", "train", "dev", "test", "probe", "mc", "drift", "if"}
    for r in [record["base"], *record["grid"]["ce"], record["rl"]["psft"]["after"]]:
        assert set(r["time"]) == parts and all(v >= 0 for v in r["time"].values())
        assert r["time"]["wall"] == pytest.approx(sum(v for k, v in r["time"].items() if k != "wall"))
        assert r["time"]["wall"] == r["wall_seconds"] and r["time"]["test"] > 0
    assert record["base"]["time"]["dev"] > 0 and record["grid"]["ce"][0]["time"]["dev"] > 0
    rows = re.findall(r"^\| (.+?) \| (\d+) \| \d+ \| \d+ \|.* \| (\d+)% \|$", page, re.MULTILINE)
    assert rows[0][0] == "base model" and rows[-1][0] == "**total**"
    assert len(rows) == 1 + 16 + 4 + 2 + 1  # the base, every run, the refresh sweep's own runs, 2 GRPO, total


def test_the_rl_follow_up_starts_from_the_selected_checkpoints_and_is_evaluated(studied):
    out, page, record = studied
    assert list(record["rl"]) == ["ce", "psft"]
    for name, rl in record["rl"].items():
        start = record["chosen"][name][0]
        assert rl["from"] == f"{name}_lr{start['lr']:g}"
        assert (Path(start["folder"]) / "model" / "config.json").is_file()  # the exported selected weights
        assert [row["step"] for row in rl["steps"]] == [1, 2]
        assert all(math.isfinite(row["reward"]) and row["entropy"] > 0 for row in rl["steps"])
        # 2 steps of 2 prompts over the first 2: each prompt scored twice, 2 samples each time
        assert [(row["prompt"], row["pass"]) for row in rl["prompt_rewards"]] == [
            (0, 1),
            (0, 2),
            (1, 1),
            (1, 2),
        ]
        assert all(len(row["rewards"]) == 2 for row in rl["prompt_rewards"])
        after = rl["after"]
        assert after["lr"] is None and len(after["test_greedy"]) == len(start["test_greedy"])
        assert set(after["metrics"]) >= {"ood/mc_acc", "ood/drift_nll", "ood/if_strict", "eval/entropy"}
    # drift after RL is measured against the base model's answers, not the RL model's own
    assert sorted(p.name for p in (out / "runs").glob("drift_reference*")) == ["drift_reference.tiny.jsonl"]
    assert "## Claim 4: the RL follow-up" in page and "| PSFT -> GRPO (seed 0) from psft_lr" in page
    assert page.count("(2 prompts, last pass - first) |") == 2
    assert "over the first 2 training prompts (2 passes)" in page
    assert "After GRPO, PSFT's start minus SFT's on the same test questions" in page
    for name in ("rl_reward", "rl_entropy"):
        assert (out / "results" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_the_refresh_sweep_reruns_psft_at_every_interval_and_tables_it(studied):
    out, page, record = studied
    sweep, psft = record["refresh"], record["chosen"]["psft"][0]
    assert record["refresh_sweep"] == [1, 2, 8, 32, "never"] == [r["interval"] for r in sweep]
    assert all((r["objective"], r["lr"], r["seed"]) == ("psft", psft["lr"], psft["seed"]) for r in sweep)
    assert sweep[1]["folder"] == psft["folder"]  # the test budget's own interval (2) is the study's PSFT run
    folders = sorted(p.name for p in (out / "runs" / "refresh").iterdir() if p.is_dir())
    assert folders == [f"psft_lr{psft['lr']:g}_refresh{n}" for n in ("1", "32", "8", "never")]
    steps = sweep[0]["snapshots"]  # refreshing every step: one snapshot per optimizer step
    assert steps == 16 and [r["snapshots"] for r in sweep] == [16, 8, 2, 1, 1]  # never: the first only
    assert len({r["metrics"]["ood/drift_nll"] for r in sweep}) > 1  # the intervals trained differently
    assert "## PSFT's refresh interval" in page
    rows = re.findall(
        r"^\| (\d+ steps?|never) \| (\d+) \| [12] \| \d\.\d{3} \| \d\.\d{3} \| \d+\.\d{3} "
        r"\| \d+\.\d{3} \| \d+ \|$",
        page,
        re.MULTILINE,
    )
    assert rows == [("1 step", "16"), ("2 steps", "8"), ("8 steps", "2"), ("32 steps", "1"), ("never", "1")]


def test_the_final_metrics_describe_the_selected_epoch_not_the_last(studied):
    _, _, record = studied
    plot_runs = load_script("plot_runs")
    psft = record["chosen"]["psft"][0]
    assert psft["selected"]["epoch"] == 1  # dev accuracy ties at 0: the earlier epoch is kept
    scalars = plot_runs.read_scalars(psft["folder"])
    entropy = dict(scalars["eval/entropy"])
    selected_step = psft["selected"]["step"]
    assert psft["metrics"]["eval/entropy"] == pytest.approx(entropy[selected_step], abs=1e-5)
    assert abs(entropy[selected_step] - entropy[max(entropy) - 2]) > 1e-4  # training moved it after
    assert [v for _, v in scalars["dev/accuracy"]] == [c["dev_accuracy"] for c in psft["checkpoints"]]


def test_any_dataset_with_fields_and_an_answer_pattern(tmp_path):
    rows = [
        {
            "problem": f"What is {a} plus {a}?",
            "solution": f"{a} + {a} = {2 * a}\n#### {2 * a}",
            "target": 2 * a,
        }
        for a in range(1, 21)
    ]
    for split, part in (("train", rows[:12]), ("dev", rows[12:16]), ("test", rows[16:])):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in part), encoding="utf-8"
        )
    task = Task(
        *(str(tmp_path / f"{s}.jsonl") for s in ("train", "dev", "test")),
        prompt_field="problem",
        completion_field="solution",
        final_field="target",
        answer_pattern=r"#### (\S+)",
    )
    assert correct("so #### 4 then #### 34", "34", task.compiled()) and not correct(
        "34", "34", task.compiled()
    )
    every = task.questions(task.test_file, 0)  # a seeded sample (selection.sampled) of the four
    assert sorted(every) == [(f"What is {a} plus {a}?", str(2 * a)) for a in range(17, 21)]
    assert task.questions(task.test_file, 2) == every[:2]
    epoch_file(task, BUDGETS["test"], tmp_path / "runs")
    record = run(RunPlan("ce", 1e-3, "tiny", 0, tmp_path / "runs" / "seed0"), BUDGETS["test"], task, ROOT)
    assert len(record["test_greedy"]) == 4 and record["task"]["answer_pattern"] == r"#### (\S+)"
    assert len(record["checkpoints"]) == 2
    with pytest.raises(ConfigError, match="not a regex"):
        Task(answer_pattern="(").compiled()
    with pytest.raises(DataError, match="test.jsonl:1: the study needs a text field 'question'"):
        Task().questions(str(task.test_file), 1)


def test_the_budgets_fit_their_machines():
    standard = BUDGETS["standard"]
    assert standard.estimate() <= 90 * 60 and BUDGETS["smoke"].estimate() <= 20 * 60
    assert not standard.rl  # GRPO that moves does not fit beside it: sized on its own (docs/rl.md)
    assert standard.scoring["num_test"] >= 512 and standard.scoring["num_dev"] >= 100
    assert len(standard.seeds) >= 2
    for budget in BUDGETS.values():
        assert len(budget.lrs["ce"]) >= 2 and len(budget.lrs["psft"]) >= 2
    assert (
        BUDGETS["test"].runs() == 12 + 2 + 2
    )  # the grid adds one run each to SFT and PSFT; seed 1 re-runs both


def test_plot_runs_draws_selected_tags_of_any_run_folder(studied, tmp_path):
    out, _, _ = studied
    plot_runs = load_script("plot_runs")
    written = plot_runs.main(
        [str(out / "runs" / "seed0" / "*"), "--tags", "train/loss", "nope", "--out", str(tmp_path)]
    )
    assert [Path(p).name for p in written] == ["train_loss.png"]
    with pytest.raises(ConfigError, match="no TensorBoard event files"):
        plot_runs.main([str(tmp_path / "empty"), "--out", str(tmp_path)])


def test_psft_study_and_plot_are_the_library_code_behind_the_scripts(studied, tmp_path, capsys):
    from psft_lightning.cli import main

    out, _, record = studied
    main(["plot", record["chosen"]["psft"][0]["folder"], "--tags", "train/loss", "--out", str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "train_loss.png")
    with pytest.raises(SystemExit) as done:
        main(["study", "--help"])
    assert done.value.code == 0 and "--budget {full,smoke,standard,test}" in capsys.readouterr().out
    assert load_script("reproduce").main.__module__ == "reproduce"  # a wrapper: the study is in the package
    assert load_script("plot_runs").find_runs.__module__ == "psft_lightning.study.plots"


def test_psft_help_lists_every_subcommand(capsys):
    from psft_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage == "usage: psft {fit,validate,export,objectives,study,plot,grpo,dpo,eval} ..."
