"""Final answers of any dataset: read with the answer pattern from a final field or from the completion,
compared by value when both are numbers and as normalised text otherwise; every file and row is checked
before a study loads a model."""

from __future__ import annotations

import json
import re
import time

import pytest

from psft_lightning.errors import DataError
from psft_lightning.evaluation.answers import last_answer, reference_answer, same_answer
from psft_lightning.evaluation.suite import EvalConfig, EvalSuite
from psft_lightning.rl import GRPOSettings, exact_match_reward, load_prompts
from psft_lightning.study.selection import Task, correct

GSM8K = re.compile(r"#### (\S+)")


@pytest.mark.parametrize(
    "answer, reference, same",
    [
        ("1,000", "1000", True),
        ("1000", "1,000", True),
        ("3.50", "3.5", True),
        ("-2", "-2.0", True),
        ("$18", "18", True),
        ("18.", "18", True),
        ("-$5", "-5", True),
        ("+7", "7", True),
        (".5", "0.5", True),
        ("1,000.50", "1000.5", True),
        ("18", "19", False),
        ("-2", "2", False),
        ("1,00", "100", False),  # not a thousands grouping: compared as text
        ("0.1", "0.10000001", False),
        ("  Paris. ", "paris", True),
        ("New   York", "new york", True),
        ("Straße", "STRASSE", True),  # casefold, not lower
        ("f(x)", "f(x", False),  # a closing bracket is not trailing punctuation
        ("yes!", "Yes", True),
        ("1e3", "1000", False),  # only plain decimal numbers compare by value
        ("nan", "NaN", True),  # as text
        (None, "18", False),  # no answer is wrong
    ],
)
def test_same_answer_compares_numbers_by_value_and_text_normalised(answer, reference, same):
    assert same_answer(answer, reference) is same


def test_the_reference_answer_is_the_final_field_else_the_completions_last_match():
    solution = "48 / 2 = 24.\n#### 24\nthen 24 + 48 = 72\n#### 72"
    assert last_answer(solution, GSM8K) == "72"
    assert last_answer("no answer here", GSM8K) is None
    assert last_answer("it is 7 and 9", re.compile(r"\d+")) == "9"  # no group: the whole match
    assert reference_answer({"answer": solution}, "final", "answer", GSM8K) == "72"
    assert reference_answer({"answer": solution, "final": 5}, "final", "answer", GSM8K) == "5"
    assert reference_answer({"answer": solution, "final": "#### 8"}, "final", "answer", GSM8K) == "8"
    assert reference_answer({"answer": "72"}, "final", "answer", GSM8K) is None
    assert reference_answer({"answer": solution, "final": True}, "final", "answer", GSM8K) == "72"


def gsm8k_rows(n: int) -> list[dict]:
    return [{"question": f"What is {a} times 1000?", "answer": f"{a} * 1000\n#### {a},000"} for a in range(n)]


def write(path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_selection_grpo_and_evaluation_read_rows_without_a_final_field(tmp_path):
    path = write(tmp_path / "d.jsonl", gsm8k_rows(3))
    task = Task(path, path, path, answer_pattern=r"#### (\S+)")
    every = task.questions(path, 0)  # a seeded sample (study.selection.sampled): here all three, shuffled
    assert sorted(every) == [(f"What is {a} times 1000?", f"{a},000") for a in range(3)]
    assert task.questions(path, 2) == every[:2]
    assert correct("so #### 1000.", "1,000", task.compiled()) and not correct(
        "1000", "1,000", task.compiled()
    )
    settings = GRPOSettings(
        prompt_field="question", answer_field="final", completion_field="answer", answer_pattern=r"#### (\S+)"
    )
    prompts = load_prompts(tmp_path / "d.jsonl", settings)
    assert [row.answer for row in prompts] == ["0,000", "1,000", "2,000"]
    reward = exact_match_reward(r"#### (\S+)")
    assert reward(["#### 2000", "#### 2,001", "2000"], ["2,000"] * 3) == [1.0, 0.0, 0.0]
    suite = EvalSuite(EvalConfig(eval_file=path, answer_pattern=r"#### (\S+)"))
    assert suite.finals(0) == ["0,000", "1,000", "2,000"]
    bad = write(tmp_path / "bad.jsonl", [*gsm8k_rows(1), {"question": "q", "answer": "no answer"}])
    with pytest.raises(DataError, match=re.escape(f"{bad}:2: accuracy needs a final answer")):
        EvalSuite(EvalConfig(eval_file=bad, answer_pattern=r"#### (\S+)")).finals(0)
    assert len(EvalSuite(EvalConfig(eval_file=bad)).rows()) == 2  # the entropy probe needs no final answer


@pytest.mark.parametrize(
    "rows, where, message",
    [
        ([{"question": "q", "answer": "#### 1"}, {"answer": "#### 2"}], 2, "a text field 'question'"),
        ([{"question": "q", "answer": 3}], 1, "a text field 'answer'"),
        ([{"question": "q", "answer": "it is 3"}], 1, "no final answer: the row has no field 'final'"),
        ([["q", "#### 1"]], 1, "a row must be a JSON object"),
    ],
)
def test_every_row_of_every_file_is_checked_with_its_file_and_line(tmp_path, rows, where, message):
    good = write(tmp_path / "good.jsonl", gsm8k_rows(2))
    bad = write(tmp_path / "bad.jsonl", rows)
    for files in ((bad, good, good), (good, bad, good), (good, good, bad)):
        with pytest.raises(DataError, match=re.escape(f"{bad}:{where}: ") + ".*" + re.escape(message)):
            Task(*files, answer_pattern=r"#### (\S+)").check()
    with pytest.raises(DataError, match="nope.jsonl"):
        Task(good, good, str(tmp_path / "nope.jsonl"), answer_pattern=r"#### (\S+)").check()
    Task(good, good, good, answer_pattern=r"#### (\S+)").check()


def test_psft_study_refuses_a_row_without_an_answer_before_any_model_work(tmp_path, monkeypatch, capsys):
    from psft_lightning.cli import main
    from psft_lightning.study import runs

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the data were checked")

    monkeypatch.setattr(runs, "run_from_config", no_model)
    good = write(tmp_path / "train.jsonl", gsm8k_rows(4))
    dev = write(tmp_path / "dev.jsonl", [*gsm8k_rows(2), {"question": "q", "answer": "It is 4."}])
    files = ["--train-file", good, "--dev-file", dev, "--test-file", good]
    begin = time.perf_counter()
    with pytest.raises(SystemExit) as done:
        main(["study", "--budget", "test", "--model", "tiny", *files, "--answer-pattern", r"#### (\S+)",
              "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results.md")])  # fmt: skip
    seconds = time.perf_counter() - begin
    err = capsys.readouterr().err
    assert done.value.code == 2 and seconds < 10
    assert f"{dev}:3: no final answer: the row has no field 'final'" in err and "'answer'" in err
    assert not (tmp_path / "runs").exists()  # nothing of the study was started
