"""The DPO recipe: pairs from the model's own samples (built exactly), TRL's DPOTrainer on them,
and the errors of a model that gives no pair."""

from __future__ import annotations

import json
import math

import pytest
from test_export import untrained_checkpoint
from test_grpo import logits

from psft_lightning.cli import main
from psft_lightning.errors import ConfigError
from psft_lightning.export import export_checkpoint
from psft_lightning.rl import DPOSettings, Pair, PromptRow, preference_pairs, train_dpo
from psft_lightning.rl.model_dir import load_exported

PATTERN = DPOSettings().answer_pattern


def test_pairs_put_each_correct_sample_over_an_incorrect_one_of_the_same_prompt():
    rows = [PromptRow("a?", "3"), PromptRow("b?", "5"), PromptRow("c?", "7")]
    samples = [
        ["The answer is 3.", "The answer is 4.", "no idea", "So The answer is 3."],
        ["The answer is 5.", "The answer is 5."],  # always right: no pair
        ["The answer is 8.", "7"],  # never right: no pair
    ]
    assert preference_pairs(rows, samples, PATTERN) == [
        Pair("a?", "The answer is 3.", "The answer is 4."),
        Pair("a?", "So The answer is 3.", "no idea"),
    ]


def test_bad_dpo_settings_are_config_errors():
    with pytest.raises(ConfigError, match="DPO samples must be >= 2, got 1"):
        DPOSettings(samples=1)
    with pytest.raises(ConfigError, match="DPO batch_size must be >= 1, got 0"):
        DPOSettings(batch_size=0)


@pytest.fixture
def exported(tmp_path):
    return export_checkpoint(untrained_checkpoint(tmp_path / "tiny.ckpt"), tmp_path / "export")


def test_dpo_starts_at_log_2_and_moves_the_model(tmp_path, exported):
    """At the reference every margin is 0, so the first step's loss is -log sigmoid(0) = log 2."""
    model, tokenizer = load_exported(exported)
    reference, _ = load_exported(exported)
    pairs = [Pair("What is 1 + 2?", "The answer is 3.", "The answer is 4."), Pair("2 + 2?", "4", "5")]
    settings = DPOSettings(steps=2, batch_size=2, lr=1e-3)
    rows = train_dpo(model, reference, tokenizer, pairs, tmp_path / "dpo", settings)
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["margin"] > 0 and rows[1]["loss"] < math.log(2)  # the step raised chosen over rejected
    saved = [json.loads(line) for line in (tmp_path / "dpo" / "dpo_log.jsonl").read_text().splitlines()]
    assert saved == rows
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo" / "model")
    assert (logits(trained) - logits(AutoModelForCausalLM.from_pretrained(exported))).abs().max() > 1e-4


def test_psft_dpo_of_a_model_that_never_answers_has_no_pair(tmp_path, exported, arithmetic_files, capsys):
    flags = "--prompts 2 --samples 2 --max-new-tokens 4 --prompt-field question"
    paths = ["--model", str(exported), "--train-file", arithmetic_files[0], "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as stop:
        main(["dpo", *paths, *flags.split()])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "psft: error: " in err and "no preference pair: none of the 2 prompts" in err
    assert not (tmp_path / "o").exists()
