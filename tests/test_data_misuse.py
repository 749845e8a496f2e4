"""Data misuse (issue 8): what `psft fit` says about non-UTF-8, empty, nullable, overlong and odd-role data.

Each item runs once through the real `psft` command; the siblings of each fault (every reader, every
format) are checked on the data functions directly, which is much faster.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import subprocess_env

from psft_lightning.data import Fields, PSFTDataModule, row_to_example
from psft_lightning.data.sources import read_rows
from psft_lightning.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
# the console script beside this interpreter (a virtual environment's bin/), else the one on PATH
PSFT = shutil.which("psft", path=str(Path(sys.executable).parent)) or shutil.which("psft") or "psft"


def psft_fit(tmp_path, train: Path, *extra: str) -> subprocess.CompletedProcess:
    """One step of `psft fit` on the tiny model with ``train`` as the only data (no validation)."""
    command = [
        PSFT,
        "fit",
        "--config",
        "configs/tiny.yaml",
        f"--data.train_files={train}",
        "--data.val_files=null",
        "--data.val_fraction=0",
        "--trainer.max_steps=1",
        "--trainer.val_check_interval=1",  # 2 batches of 4: below tiny.yaml's 4
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *extra,
    ]
    env = subprocess_env()
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def raises_at(message: str):
    """pytest.raises for a DataError whose message starts with ``message`` (taken literally)."""
    return pytest.raises(DataError, match="^" + re.escape(message))


def qa_lines(n: int) -> list[bytes]:
    return [json.dumps({"question": f"{i}+1?", "answer": f"{i + 1}"}).encode() for i in range(n)]


def assert_data_error(run: subprocess.CompletedProcess, *parts: str) -> None:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("psft: error: ")]
    for part in parts:
        assert part in line, line


def test_cli_non_utf8_line_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = qa_lines(8)
    lines[2] = '{"question": "caf\u00e9?", "answer": "1"}'.encode("latin-1")
    path.write_bytes(b"\n".join(lines) + b"\n")
    run = psft_fit(tmp_path, path)
    assert_data_error(run, f"{path}:3: not valid UTF-8", "byte 0xe9 at column 18", "iconv")


def test_cli_whitespace_only_file_is_called_empty(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("  \n\n\t\n")
    assert_data_error(psft_fit(tmp_path, path), f"{path}: the file is empty (whitespace only)")


def test_cli_unknown_chat_role_names_file_line_and_known_roles(tmp_path):
    path = tmp_path / "sharegpt.jsonl"
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3
    rows.append({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = psft_fit(tmp_path, path)
    assert_data_error(
        run, f"{path}:4: messages[0] has role 'human'", "system, user, assistant, tool", "human -> user"
    )


def test_cli_null_columns_count_as_absent_in_parquet(tmp_path):
    """Merged datasets: Parquet fills the other format's columns with null; such rows train."""
    import datasets

    chat = {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}
    rows = [{"question": f"{i}+1?", "answer": f"{i + 1}", "messages": None} for i in range(4)]
    rows += [{"question": None, "answer": None, "messages": list(chat)} for _ in range(4)]
    path = tmp_path / "merged.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    run = psft_fit(tmp_path, path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "train: 8 examples" in run.stderr


def test_cli_truncation_is_counted_with_lost_eos_and_longest(tmp_path):
    """Tiny tokenizer: a ChatML prompt/completion row is 21 + len(prompt) + len(completion) tokens, the
    completion's EOS at index length - 2 (a plain "\\n" follows it). At max_length=32: completions of
    11, 20 and 30 characters give 33 (only the "\\n" is cut), 42 and 52 tokens (their EOS is cut)."""
    path = tmp_path / "long.jsonl"
    sizes = [5, 5, 11, 5, 20, 5, 30, 5]
    path.write_text("".join(json.dumps({"question": "q", "answer": "a" * n}) + "\n" for n in sizes))
    run = psft_fit(tmp_path, path, "--data.max_length=32")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        "train data: truncated 3 of 8 examples to max_length=32, 2 of them losing their final EOS; "
        f"the longest has 52 tokens, so max_length=52 keeps every example whole (e.g. {path}:3, {path}:5, "
        f"{path}:7)"
    ) in run.stderr


# ======================================================================= siblings: every reader
def arrow_strings(values: list[bytes]):
    """A string column holding exactly these bytes (Arrow does not check them)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.cumsum([0] + [len(v) for v in values], dtype=np.int32)
    buffers = [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers)


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        # a byte-order mark and CRLF line ends; the 2-byte character before the bad byte is one column
        (
            "bom.jsonl",
            b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "\xc3\xa9\xff"}\r\n',
            "2: not valid UTF-8 (byte 0xff at column 12: invalid start byte)",
        ),
        (
            "mac.jsonl",
            b'{"text": "a"}\r{"text": "\xe9"}',
            "2: not valid UTF-8 (byte 0xe9 at column 11: invalid continuation byte)",
        ),
        (
            "rows.json",
            b'[\n  {"text": "ok"},\n  {"text": "caf\xe9"}\n]',
            "3: not valid UTF-8 (byte 0xe9 at column 16: invalid continuation byte)",
        ),
    ],
    ids=["bom-crlf", "cr", "json-array"],
)
def test_non_utf8_json_names_line_and_column(tmp_path, name, data, where):
    path = tmp_path / name
    path.write_bytes(data)
    hint = f"convert it with `iconv -f latin1 -t utf-8 {name} > utf8-{name}`"
    with raises_at(f"{path}:{where}. JSON files must be UTF-8; if this one is Latin-1, {hint}"):
        list(read_rows(str(path)))


def test_non_utf8_parquet_and_saved_dataset_name_row_and_field(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"question": arrow_strings([b"ok", b"caf\xe9", b"fine"]), "answer": ["1", "2", "3"]})
    parquet = tmp_path / "bad.parquet"
    pq.write_table(table, parquet)
    saved = tmp_path / "saved"
    datasets.Dataset(table).save_to_disk(str(saved))
    for path, name in [(parquet, f"{parquet}"), (saved, f"{saved}[train]")]:
        rows = read_rows(str(path))
        assert next(rows) == ({"question": "ok", "answer": "1"}, f"{name} row 0")
        with raises_at(
            f"{name} row 1: field 'question' is not valid UTF-8 (unexpected end of data); rewrite"
        ):
            next(rows)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("zero.jsonl", "", "the file is empty; it holds no rows"),
        ("blank.json", " \n\t\n", "the file is empty (whitespace only); it holds no rows"),
        ("array.json", "[ ]\n", "holds an empty JSON array; it has no rows"),
    ],
)
def test_empty_json_files_are_called_empty(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with raises_at(f"{path}: {message}"):
        list(read_rows(str(path)))


def test_empty_parquet_and_saved_dataset_are_called_empty(tmp_path):
    import datasets

    empty = datasets.Dataset.from_dict({"text": []})
    parquet, saved, split = tmp_path / "empty.parquet", tmp_path / "saved", tmp_path / "split"
    empty.to_parquet(str(parquet))
    empty.save_to_disk(str(saved))
    datasets.DatasetDict({"train": empty}).save_to_disk(str(split))
    with raises_at(f"{parquet}: the dataset is empty (0 rows; columns: ['text'])"):
        list(read_rows(str(parquet)))
    with raises_at(f"{saved}: the saved dataset is empty (0 rows in the dataset)"):
        list(read_rows(str(saved)))
    with raises_at(f"{split}: the saved dataset is empty (0 rows in split 'train')"):
        list(read_rows(str(split)))
    filtered = tmp_path / "filtered"  # filtered to nothing: a data file with no rows
    datasets.Dataset.from_dict({"text": ["a"]}).filter(lambda row: False).save_to_disk(str(filtered))
    with raises_at(f"{filtered}[train]: the dataset is empty (0 rows; columns: ['text'])"):
        list(read_rows(str(filtered)))


def test_corrupt_saved_dataset_is_a_data_error(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(saved))
    for arrow in saved.glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    with raises_at(f"{saved}: cannot load the saved dataset (ArrowInvalid: "):
        list(read_rows(str(saved)))


# ================================================================ siblings: every format, null values
CHAT = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def loss_text(tokenizer, example) -> str:
    return tokenizer.decode(
        [i for i, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
    )


@pytest.mark.parametrize(
    ("row", "loss"),
    [
        ({"messages": None, "prompt": "p", "completion": "c", "text": None}, "c<|im_end|>"),
        ({"messages": None, "prompt": None, "completion": None, "text": "tu"}, "u<|im_end|>"),
        ({"messages": CHAT, "prompt": None, "completion": None, "text": None}, "a<|im_end|>"),
    ],
    ids=["prompt_completion", "text", "messages"],
)
def test_null_columns_are_absent_for_format_detection(tokenizer, row, loss):
    assert (
        loss_text(tokenizer, row_to_example(row, tokenizer, "auto", Fields(), True, "f.parquet row 0"))
        == loss
    )


@pytest.mark.parametrize(
    ("row", "fmt", "message"),
    [
        (
            {"messages": None, "text": "t"},
            "messages",
            "missing field 'messages' (it is null) (row has: ['text'])",
        ),
        ({"prompt": "p", "completion": None}, "prompt_completion", "missing field 'completion' (it is null)"),
        (
            {"prompt": None, "completion": None, "messages": None},
            "auto",
            "cannot tell the format of this row (columns: []; null: ['completion', 'messages', 'prompt'])",
        ),
        (
            {"messages": [{"role": "user", "content": None}, CHAT[1]]},
            "auto",
            "messages[0]: missing field 'content' (it is null)",
        ),
    ],
)
def test_null_values_are_reported_as_missing(tokenizer, row, fmt, message):
    with raises_at(f"f.parquet row 0: {message}"):
        row_to_example(row, tokenizer, fmt, Fields(), True, "f.parquet row 0")


def test_null_columns_of_a_saved_dataset_are_absent(tmp_path):
    import datasets

    rows = [
        {"prompt": "p", "completion": "c", "messages": None},
        {"prompt": None, "completion": None, "messages": CHAT},
    ]
    saved = tmp_path / "merged"
    datasets.Dataset.from_list(rows * 2).save_to_disk(str(saved))
    dm = PSFTDataModule([str(saved)], tokenizer="tiny", batch_size=2, val_fraction=0.0)
    dm.setup()
    assert [e.num_loss_tokens for e in dm.train_examples] == [2, 2, 2, 2]  # "c" or "a", and EOS


# ========================================================================= siblings: chat roles
@pytest.mark.parametrize("role", ["human", "gpt", "bot", "Assistant", "USER"])
def test_unknown_roles_are_refused_anywhere_in_the_conversation(tokenizer, role):
    messages = [*CHAT, {"role": role, "content": "x"}, {"role": "assistant", "content": "y"}]
    with raises_at(
        f"f.jsonl:7: messages[2] has role {role!r}; the roles chat templates know are system, user, "
        "assistant, tool. ShareGPT-style roles need renaming: human -> user, gpt or bot -> assistant"
    ):
        row_to_example({"messages": messages}, tokenizer, "auto", Fields(), True, "f.jsonl:7")


def test_a_message_that_is_not_an_object_names_its_index(tokenizer):
    with raises_at("f.jsonl:3: messages[1] must be an object with 'role' and 'content', got str"):
        row_to_example({"messages": [CHAT[0], "hi"]}, tokenizer, "auto", Fields(), True, "f.jsonl:3")


def test_a_template_that_rewrites_earlier_turns_is_a_data_error(tokenizer):
    counting = copy.deepcopy(tokenizer)
    counting.chat_template = "{{ messages | length }}" + tokenizer.chat_template  # the prefix changes
    with raises_at("f.jsonl:1: the chat template does not render conversations prefix by prefix"):
        row_to_example({"messages": [*CHAT, *CHAT]}, counting, "auto", Fields(), True, "f.jsonl:1")


def test_unknown_format_is_a_config_error_before_any_file_is_read(tokenizer):
    message = "data.format must be one of auto, messages, prompt_completion, text, got 'chat'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        PSFTDataModule(["missing.jsonl"], tokenizer="tiny", format="chat")
    with pytest.raises(ConfigError, match=re.escape(message)):
        row_to_example({"text": "t"}, tokenizer, "chat", Fields(), True, "f.jsonl:1")


def test_tool_role_is_prompt(tokenizer):
    messages = [CHAT[0], {"role": "tool", "content": "42"}, {"role": "assistant", "content": "a"}]
    ex = row_to_example({"messages": messages}, tokenizer, "auto", Fields(), True, "f.jsonl:1")
    assert loss_text(tokenizer, ex) == "a<|im_end|>"
    assert "<|im_start|>tool\n42<|im_end|>" in tokenizer.decode(ex.input_ids)


def test_a_template_that_raises_is_a_data_error(tokenizer):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}"
        "{% endif %}" + tokenizer.chat_template
    )
    row = {"messages": [{"role": "system", "content": "s"}, *CHAT]}
    with raises_at(
        "f.jsonl:2: the chat template refuses this conversation: Conversation must start with user"
    ):
        row_to_example(row, strict, "auto", Fields(), True, "f.jsonl:2")


# ============================================================================ siblings: truncation
def test_truncation_report_and_what_a_cut_example_keeps(write_jsonl, tokenizer):
    """Sizes as in the CLI test: 27, 27, 33, 27, 42, 27, 52 and 27 tokens at max_length=32."""
    sizes = [5, 5, 11, 5, 20, 5, 30, 5]
    path = write_jsonl("long.jsonl", [{"prompt": "q", "completion": "a" * n} for n in sizes])
    dm = PSFTDataModule([path], tokenizer="tiny", max_length=32, batch_size=2, val_fraction=0.0)
    dm.setup()
    report = dm.overlong_report["train"]
    assert (report.truncated, report.lost_eos, report.longest) == (3, 2, 52)
    assert report.examples == [f"{path}:3", f"{path}:5", f"{path}:7"]
    eos = tokenizer.eos_token_id
    kept_eos, cut = dm.train_examples[2], dm.train_examples[4]
    assert len(kept_eos.input_ids) == len(cut.input_ids) == 32
    assert kept_eos.labels[-1] == eos  # only the "\n" after the EOS was cut
    assert cut.labels[-1] != eos and loss_text(tokenizer, cut) == "a" * 12  # no EOS put back at the cut
    assert dm.skipped["train"].total == 0


def test_skip_reports_the_longest_and_text_rows_lose_their_eos(write_jsonl, caplog):
    path = write_jsonl("text.jsonl", [{"text": "t" * n} for n in (10, 40, 31)])  # + EOS: 11, 41, 32 tokens
    kwargs = {"tokenizer": "tiny", "max_length": 32, "batch_size": 1, "val_fraction": 0.0}
    skip = PSFTDataModule([path], overlong="skip", **kwargs)
    with caplog.at_level(logging.WARNING, logger="psft_lightning.data.datamodule"):
        skip.setup()
    assert (
        f"skipped 1 of 3 rows: 1 longer than max_length (e.g. {path}:2); the longest has 41 tokens, so "
        "max_length=41 keeps every example whole"
    ) in caplog.text
    assert skip.overlong_report["train"].truncated == 0
    cut = PSFTDataModule([path], **kwargs)
    cut.setup()
    assert (cut.overlong_report["train"].truncated, cut.overlong_report["train"].lost_eos) == (1, 1)
    with raises_at(
        f"train data ({path}) has no usable example after max_length=8: all 3 rows are longer "
        "(the longest has 41 tokens)"
    ):
        PSFTDataModule([path], **{**kwargs, "max_length": 8, "overlong": "skip"}).setup()


def test_multi_turn_truncation_that_drops_the_last_turn_loses_its_eos(write_jsonl, tokenizer):
    """Two user/assistant rounds of 23 tokens each (21 + "q" + "a"): at max_length=30 the second
    round keeps only its first 7 tokens, no loss token among them."""
    path = write_jsonl("chat.jsonl", [{"messages": CHAT * 2}])
    dm = PSFTDataModule([path], tokenizer="tiny", max_length=30, batch_size=1, val_fraction=0.0)
    dm.setup()
    report = dm.overlong_report["train"]
    assert (report.truncated, report.lost_eos, report.longest) == (1, 1, 46)
    assert loss_text(dm.tokenizer, dm.train_examples[0]) == "a<|im_end|>"  # the first turn only


def test_bundled_data_is_not_truncated_at_256():
    fields = {"prompt": "question", "completion": "answer"}
    for split in ("train", "val"):
        path = str(REPO / "data" / "arithmetic" / f"{split}.jsonl")
        dm = PSFTDataModule([path], tokenizer="tiny", fields=fields, max_length=256, val_fraction=0.0)
        dm.setup()
        assert dm.overlong_report["train"].longest == 0 and dm.skipped["train"].total == 0
