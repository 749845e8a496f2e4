"""The GRPO recipe: exact-match reward, prompt rows and their errors, and a 2-step TRL run of the
exported tiny model through ``psft grpo``."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
import torch
from test_export import untrained_checkpoint

from psft_lightning.cli import main
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.export import export_checkpoint
from psft_lightning.rl import GRPOSettings, exact_match_reward, gold_answer, load_prompts, run_grpo
from psft_lightning.rl.reward import prompt_passes

ROW = {"question": "Mia has 12 apples and buys 7. How many?", "answer": "12 + 7 = 19.\nThe answer is 19."}


def test_reward_scores_correct_incorrect_and_malformed_completions_exactly():
    reward = exact_match_reward(GRPOSettings().answer_pattern)
    completions = [
        "12 + 7 = 19.\nThe answer is 19.",  # correct
        "The answer is 20.\nThe answer is 19.",  # correct: the last answer counts
        "12 + 7 = 18.\nThe answer is 18.",  # incorrect
        "12 + 7 = 19.",  # malformed: no final-answer sentence
        "The answer is 19",  # malformed: no full stop
    ]
    assert reward(completions, answer=["19"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": "The answer is 19."}], [{"role": "assistant", "content": "19"}]]
    assert reward(chat, answer=["19", "19"], prompts=["p", "p"]) == [1.0, 0.0]


def test_each_prompts_rewards_are_split_into_its_passes():
    scored: list[tuple[int, float]] = []
    reward = exact_match_reward(GRPOSettings().answer_pattern, scored)
    right, wrong = "The answer is 19.", "The answer is 18."
    # two calls, as TRL makes them: prompts 0 and 1 with 2 samples each, then prompt 1 and 0 again
    reward([right, wrong, wrong, wrong], answer=["19"] * 4, prompt_index=[0, 0, 1, 1])
    reward([right, right, right, wrong], answer=["19"] * 4, prompt_index=[1, 1, 0, 0])
    assert scored == [(0, 1.0), (0, 0.0), (1, 0.0), (1, 0.0), (1, 1.0), (1, 1.0), (0, 1.0), (0, 0.0)]
    assert prompt_passes(scored, group=2) == [
        {"prompt": 0, "pass": 1, "rewards": [1.0, 0.0]},
        {"prompt": 0, "pass": 2, "rewards": [1.0, 0.0]},
        {"prompt": 1, "pass": 1, "rewards": [0.0, 0.0]},
        {"prompt": 1, "pass": 2, "rewards": [1.0, 1.0]},
    ]


def test_gold_answer_reads_a_worked_solution_a_number_or_a_gsm8k_solution():
    arithmetic = re.compile(GRPOSettings().answer_pattern)
    assert gold_answer(ROW["answer"], arithmetic) == "19"
    assert gold_answer(19, arithmetic) == "19"
    gsm8k = re.compile(r"#### (\S+)")
    assert gold_answer("Natalia sold 48/2 = 24 clips.\n#### 72", gsm8k) == "72"
    assert exact_match_reward(gsm8k.pattern)(["so #### 72", "#### 71"], answer=["72", "72"]) == [1.0, 0.0]


def test_load_prompts_takes_the_named_fields(write_jsonl):
    path = write_jsonl("rows.jsonl", [ROW, {**ROW, "answer": 5}])
    rows = load_prompts(path, GRPOSettings(prompt_field="question"))
    assert [(r.prompt, r.answer) for r in rows] == [(ROW["question"], "19"), (ROW["question"], "5")]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([ROW, {"answer": "The answer is 3."}], r"rows.jsonl:2: field 'question' \(the prompt\)"),
        ([ROW, {"question": "q", "answer": None}], r"rows.jsonl:2: field 'answer' \(the answer\)"),
        ([ROW, '{"question": "q", '], r"rows.jsonl:2: malformed JSON line"),
    ],
)
def test_load_prompts_names_file_row_and_field(write_jsonl, rows, message):
    path = write_jsonl("rows.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_prompts(path, GRPOSettings(prompt_field="question"))


def test_an_unreadable_train_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_prompts(tmp_path / "nope.jsonl", GRPOSettings())


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"num_generations": 1}, "num_generations must be >= 2, got 1"),
        ({"prompts": -1}, "prompts must be >= 0"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"answer_pattern": r"The answer is \d+"}, "exactly one capture group"),
        ({"answer_pattern": "(unclosed"}, "is not a regex"),
    ],
)
def test_bad_settings_are_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        GRPOSettings(**bad)


def test_a_model_dir_that_is_not_an_export_is_a_clear_cli_error(tmp_path, arithmetic_files, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["grpo", "--model", str(tmp_path), "--train-file", arithmetic_files[0], "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert f"psft: error: model directory {tmp_path} has no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")  # the prompts are checked before the model is loaded
    settings = GRPOSettings(prompt_field="question", batch_size=64)
    with pytest.raises(DataError, match="fewer than batch_size 64"):
        run_grpo(tmp_path, arithmetic_files[0], tmp_path, settings)


def test_a_missing_trl_says_what_to_install(monkeypatch):
    from psft_lightning.rl.requirements import require_trl

    monkeypatch.setitem(sys.modules, "trl", None)  # what an uninstalled package imports as
    with pytest.raises(ConfigError, match=r"install it with pip install 'psft-lightning\[rl\]'"):
        require_trl()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model.eval()(input_ids=torch.tensor([[60, 61, 62, 10, 256, 70]])).logits


def test_psft_grpo_trains_an_exported_model_and_logs_every_step(tmp_path, arithmetic_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = export_checkpoint(untrained_checkpoint(tmp_path / "tiny.ckpt"), tmp_path / "export")
    out = tmp_path / "grpo"
    flags = "--steps 3 --num-generations 2 --batch-size 2 --max-new-tokens 6 --prompt-field question"
    paths = ["--model", str(exported), "--train-file", arithmetic_files[0], "--out", str(out)]
    main(["grpo", *paths, *flags.split(), "--prompts", "2"])

    # 3 steps of the same 2 prompts: 3 passes over each, 2 samples each time
    passes = [json.loads(line) for line in (out / "grpo_prompt_rewards.jsonl").read_text().splitlines()]
    assert [(row["prompt"], row["pass"], row["rewards"]) for row in passes] == [
        (prompt, k, [0.0, 0.0]) for prompt in (0, 1) for k in (1, 2, 3)
    ]

    rows = [json.loads(line) for line in (out / "grpo_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert math.isfinite(row["entropy"]) and row["entropy"] > 0
        # a random model never writes "The answer is N.": every reward is exactly 0
        assert (row["reward"], row["reward_std"]) == (0.0, 0.0)
        assert 1 <= row["completion_length"] <= 6
        assert row["seconds"] > 0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert AutoTokenizer.from_pretrained(out / "model").eos_token == "<|im_end|>"
    # zero reward everywhere is zero advantage: GRPO leaves the weights as they were
    assert (logits(model) - logits(AutoModelForCausalLM.from_pretrained(exported))).abs().max() < 1e-6


def test_psft_grpo_trains_in_bf16_on_a_cpu(tmp_path, arithmetic_files):
    """transformers refuses ``bf16`` on a CPU unless told the run is on the CPU: ``--bf16`` must work."""
    exported = export_checkpoint(untrained_checkpoint(tmp_path / "tiny.ckpt"), tmp_path / "export")
    flags = "--steps 1 --num-generations 2 --batch-size 2 --max-new-tokens 4 --prompt-field question --bf16"
    paths = ["--model", str(exported), "--train-file", arithmetic_files[0], "--out", str(tmp_path / "grpo")]
    main(["grpo", *paths, *flags.split()])
    rows = (tmp_path / "grpo" / "grpo_log.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in rows] == [1]
