"""Data: formats -> labels masks, sources (JSONL/JSON/Parquet/saved dataset), the datamodule's splits."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from psft_lightning.data import IGNORE_INDEX, Fields, PSFTDataModule, row_to_example
from psft_lightning.data.sources import read_rows
from psft_lightning.errors import ConfigError, DataError

EOS = "<|im_end|>"


def loss_text(tokenizer, example) -> str:
    """The decoded loss tokens (labels != -100), checking each equals its input token."""
    kept = [(i, label) for i, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
    assert all(i == label for i, label in kept)
    return tokenizer.decode([i for i, _ in kept])


def prompt_text(tokenizer, example) -> str:
    return tokenizer.decode(
        [i for i, label in zip(example.input_ids, example.labels, strict=True) if label == -100]
    )


def example(tokenizer, row, fmt="auto", fields=None, chat=True, where="f.jsonl:1"):
    return row_to_example(row, tokenizer, fmt, fields or Fields(), chat, where)


def datamodule(files, **kwargs) -> PSFTDataModule:
    kwargs.setdefault("tokenizer", "tiny")
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("val_fraction", 0.0)
    return PSFTDataModule(files, **kwargs)


# ============================================================================================ formats
def test_messages_loss_on_every_assistant_turn_with_its_eos_only(tokenizer):
    row = {
        "messages": [
            {"role": "system", "content": "SYS"},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"},
        ]
    }
    ex = example(tokenizer, row)
    assert loss_text(tokenizer, ex) == f"a1{EOS}a2{EOS}"
    assert ex.num_loss_tokens == 6  # byte-level: 2 + EOS per turn
    assert tokenizer.decode(ex.input_ids) == tokenizer.apply_chat_template(row["messages"], tokenize=False)
    prompt = prompt_text(tokenizer, ex)
    for text in ("SYS", "u1", "u2", "system", "user", "<|im_start|>assistant\n"):
        assert text in prompt
    # the EOS of each assistant turn is a loss token; the EOS of system/user turns is not
    eos_id = tokenizer.eos_token_id
    eos_labels = [label for i, label in zip(ex.input_ids, ex.labels, strict=True) if i == eos_id]
    assert eos_labels == [IGNORE_INDEX, IGNORE_INDEX, eos_id, IGNORE_INDEX, eos_id]


def test_prompt_completion_loss_on_completion_and_eos(tokenizer):
    row = {"prompt": "2+2?", "completion": "4"}
    chat = example(tokenizer, row)
    assert loss_text(tokenizer, chat) == f"4{EOS}"
    assert prompt_text(tokenizer, chat).endswith("<|im_start|>assistant\n\n")  # "\n" after EOS: no loss
    plain = example(tokenizer, row, chat=False)
    assert plain.input_ids == tokenizer("2+2?4")["input_ids"] + [tokenizer.eos_token_id]
    assert plain.labels == [IGNORE_INDEX] * 4 + [plain.input_ids[4], tokenizer.eos_token_id]


def test_system_field_goes_into_the_prompt(tokenizer):
    fields = Fields(system="sys")
    ex = example(tokenizer, {"prompt": "p", "completion": "c", "sys": "be brief"}, fields=fields)
    assert prompt_text(tokenizer, ex).startswith("<|im_start|>system\nbe brief")
    assert loss_text(tokenizer, ex) == f"c{EOS}"


def test_text_loss_on_every_token_but_the_first(tokenizer):
    ex = example(tokenizer, {"text": "abc"})
    assert ex.input_ids == tokenizer("abc")["input_ids"] + [tokenizer.eos_token_id]
    assert ex.labels == [IGNORE_INDEX] + ex.input_ids[1:]


def test_configurable_field_names(tokenizer):
    fields = Fields(prompt="question", completion="answer")
    ex = example(tokenizer, {"question": "Q?", "answer": "A.", "final": 1}, fields=fields)
    assert loss_text(tokenizer, ex) == f"A.{EOS}"
    assert "Q?" in prompt_text(tokenizer, ex)
    chat = example(
        tokenizer, {"conv": [{"role": "assistant", "content": "hi"}]}, fields=Fields(messages="conv")
    )
    assert loss_text(tokenizer, chat) == f"hi{EOS}"


def test_fields_as_a_dict_in_python(write_jsonl, tokenizer):
    path = write_jsonl("qa.jsonl", [{"question": "Q?", "answer": "A."}] * 2)
    dm = datamodule([path], fields={"prompt": "question", "completion": "answer"}, use_chat_template=False)
    dm.setup()
    assert loss_text(tokenizer, dm.train_examples[0]) == f"A.{EOS}"
    with pytest.raises(ConfigError, match=r"data.fields has unknown keys \['promt'\]"):
        datamodule([path], fields={"promt": "question"})


@pytest.mark.parametrize(
    ("template", "what"),
    [
        # assistant turns rendered without content or markers: the mask covers no token
        (
            "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}"
            "{% endfor %}",
            "no token",
        ),
        # no role headers at all: an assistant-only conversation is loss everywhere
        ("{% for m in messages %}{{ m['content'] + '<|im_end|>' }}{% endfor %}", "every token"),
    ],
    ids=["covers-nothing", "covers-everything"],
)
def test_chat_template_mask_all_zeros_or_all_ones_is_an_error(tokenizer, template, what):
    odd = copy.deepcopy(tokenizer)
    odd.chat_template = template
    row = {"messages": [{"role": "assistant", "content": "hi"}]}
    if what == "no token":
        row["messages"].insert(0, {"role": "user", "content": "q"})
    with pytest.raises(DataError, match=rf"f\.jsonl:1: the chat template's assistant mask covers {what}"):
        example(odd, row)


@pytest.mark.parametrize(
    ("row", "fmt", "message"),
    [
        ({"prompt": "p"}, "auto", r"f\.jsonl:1: cannot tell the format .*columns: \['prompt'\]"),
        ({"prompt": "p"}, "prompt_completion", r"f\.jsonl:1: missing field 'completion'"),
        (
            {"prompt": "p", "completion": 5},
            "auto",
            r"f\.jsonl:1: field 'completion' must be a string, got int",
        ),
        ({"prompt": 1, "completion": "c"}, "auto", r"f\.jsonl:1: field 'prompt' must be a string"),
        ({"prompt": "p", "completion": "  "}, "auto", r"f\.jsonl:1: field 'completion' is empty"),
        ({"text": ""}, "auto", r"f\.jsonl:1: field 'text' is empty"),
        ({"messages": "hi"}, "auto", r"f\.jsonl:1: field 'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "q"}]}, "auto", r"f\.jsonl:1: .*no assistant message"),
        ({"messages": [{"role": "user"}]}, "auto", r"f\.jsonl:1: messages\[0\]: missing field 'content'"),
        (
            {"messages": [{"role": "assistant", "content": ""}]},
            "auto",
            r"messages\[0\]: field 'content' is empty",
        ),
        (["not", "a", "dict"], "auto", r"f\.jsonl:1: a row must be a JSON object, got list"),
    ],
)
def test_bad_rows_name_the_location_and_field(tokenizer, row, fmt, message):
    with pytest.raises(DataError, match=message):
        example(tokenizer, row, fmt=fmt)


def test_messages_need_a_chat_template(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(DataError, match="f.jsonl:1: 'messages' rows need a tokenizer with a chat template"):
        example(plain, {"messages": [{"role": "assistant", "content": "x"}]})
    # prompt/completion rows fall back to plain concatenation
    assert loss_text(plain, example(plain, {"prompt": "p", "completion": "c"})) == f"c{EOS}"


# ============================================================================================ sources
def test_malformed_json_line_names_file_and_line(write_jsonl):
    path = write_jsonl("bad.jsonl", [{"text": "ok"}, "", '{"text": "broken"', {"text": "after"}])
    rows = read_rows(path)
    assert next(rows) == ({"text": "ok"}, f"{path}:1")
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON line"):
        next(rows)


def test_jsonl_keeps_unicode_line_separators_and_bom(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text('\ufeff{"text": "a\u2028b"}\r\n{"text": "c"}\r\n', encoding="utf-8")
    assert [row for row, _ in read_rows(str(path))] == [{"text": "a\u2028b"}, {"text": "c"}]


def test_json_array_rows_and_bad_row_location(tmp_path, tokenizer):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "one"}, {"txt": "two"}]), encoding="utf-8")
    rows = list(read_rows(str(path)))
    assert [where for _, where in rows] == [f"{path} row 0", f"{path} row 1"]
    with pytest.raises(DataError, match=rf"{path} row 1: cannot tell the format"):
        datamodule([str(path)]).setup()
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "one"},\n {"text": }]', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{broken}:2: malformed JSON"):
        list(read_rows(str(broken)))


def test_pretty_printed_json_object_is_explained_not_called_a_bad_line(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text(json.dumps({"version": 1, "data": [{"text": "one"}]}, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: holds one JSON object .*\['data', 'version'\]"):
        list(read_rows(str(path)))
    lines = tmp_path / "lines.json"  # JSON Lines content in a .json file still reads row by row
    lines.write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    assert [where for _, where in read_rows(str(lines))] == [f"{lines}:1", f"{lines}:2"]


def test_parquet_rows_and_bad_row_location(tmp_path):
    import datasets

    path = str(tmp_path / "rows.parquet")
    datasets.Dataset.from_list(
        [{"prompt": "p0", "completion": "c0"}, {"prompt": "p1", "completion": None}]
    ).to_parquet(path)
    assert next(read_rows(path)) == ({"prompt": "p0", "completion": "c0"}, f"{path} row 0")
    with pytest.raises(DataError, match=rf"{path} row 1: cannot tell .*\['prompt'\]; null: \['completion'\]"):
        datamodule([path]).setup()
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("nope")
    with pytest.raises(DataError, match=rf"{not_parquet}: cannot read as Parquet"):
        list(read_rows(str(not_parquet)))


def test_saved_dataset_and_dataset_dict_splits(tmp_path):
    import datasets

    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(6)
    ]
    single = str(tmp_path / "single")
    datasets.Dataset.from_list(rows).save_to_disk(single)
    assert [where for _, where in read_rows(single)][:2] == [
        f"{single}[train] row 0",
        f"{single}[train] row 1",
    ]
    dm = datamodule([single], val_files=[single])
    dm.setup()
    assert len(dm.train_examples) == 6 and len(dm.val_examples) == 6

    split = str(tmp_path / "split")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4])}).save_to_disk(split)
    assert len(list(read_rows(split, "train"))) == 4
    with pytest.raises(
        DataError, match=rf"{split}: no split 'validation' in the saved dataset \(has \['train'\]\)"
    ):
        list(read_rows(split, "validation"))


@pytest.mark.parametrize("name", ["missing.jsonl", "rows.csv"])
def test_missing_or_unsupported_file(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("a,b\n")
    with pytest.raises(DataError, match=rf"{path}: (no such file|unsupported file type)"):
        list(read_rows(str(path)))
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    with pytest.raises(DataError, match=rf"{empty_dir}: not a dataset saved with"):
        list(read_rows(str(empty_dir)))


# ========================================================================================= datamodule
def long_prompt_rows():
    return [
        {"prompt": "p" * 10, "completion": "short"},
        {"prompt": "p" * 80, "completion": "c"},  # the prompt alone is longer than max_length
        {"prompt": "p", "completion": "x" * 80},  # only the response is cut
    ]


def test_prompt_longer_than_max_length_is_counted_and_logged_under_truncate(write_jsonl, caplog):
    path = write_jsonl("long.jsonl", long_prompt_rows())
    dm = datamodule([path], max_length=48, use_chat_template=False, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="psft_lightning.data.datamodule"):
        dm.setup()
    assert dm.skipped["train"].counts == {"prompt alone fills max_length": 1}
    assert dm.skipped["train"].examples["prompt alone fills max_length"] == [f"{path}:2"]
    assert f"train data: skipped 1 of 3 rows: 1 prompt alone fills max_length (e.g. {path}:2)" in caplog.text
    assert [len(e.input_ids) for e in dm.train_examples] == [16, 48]
    assert dm.train_examples[1].num_loss_tokens == 47  # the cut response keeps loss up to max_length


def test_overlong_skip_and_error(write_jsonl):
    path = write_jsonl("long.jsonl", long_prompt_rows())
    skip = datamodule([path], max_length=48, use_chat_template=False, overlong="skip", batch_size=1)
    skip.setup()
    assert skip.skipped["train"].counts == {"longer than max_length": 2}
    assert len(skip.train_examples) == 1
    with pytest.raises(DataError, match=rf"{path}:2: 82 tokens exceed max_length=48 \(data.overlong=error"):
        datamodule([path], max_length=48, use_chat_template=False, overlong="error").setup()
    with pytest.raises(
        DataError, match=r"train data \(.*long.jsonl\) has no usable example after max_length=4"
    ):
        datamodule([path], max_length=4, use_chat_template=False, overlong="skip").setup()


def numbered_rows(n):
    return [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(n)]


def completions(tokenizer, examples):
    return [loss_text(tokenizer, e).removesuffix(EOS) for e in examples]


def test_validation_split_is_seeded_and_disjoint(write_jsonl, tokenizer):
    path = write_jsonl("rows.jsonl", numbered_rows(20))

    def split(seed):
        dm = datamodule([path], val_fraction=0.25, seed=seed)
        dm.setup()
        return completions(tokenizer, dm.train_examples), completions(tokenizer, dm.val_examples)

    train, val = split(0)
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val) == sorted(f"a{i}" for i in range(20))
    assert split(0) == (train, val)
    assert set(split(1)[1]) != set(val)
    capped = datamodule([path], val_fraction=0.25, max_val_examples=2)
    capped.setup()
    assert completions(tokenizer, capped.val_examples) == val[:2]


def test_train_order_is_seeded(write_jsonl, tokenizer):
    path = write_jsonl("rows.jsonl", numbered_rows(12))

    def order(seed, shuffle=True):
        dm = datamodule([path], seed=seed, shuffle=shuffle)
        batches = list(dm.train_dataloader())
        assert len(batches) == 6 and all(b["input_ids"].shape[0] == 2 for b in batches)
        return [
            tokenizer.decode(row[row != tokenizer.pad_token_id]) for b in batches for row in b["input_ids"]
        ]

    first = order(0)
    assert sorted(first) == sorted(order(0, shuffle=False))  # every example once
    assert order(0) == first
    assert order(1) != first
    assert order(0, shuffle=False) == [
        tokenizer.decode(e.input_ids) for e in datamodule([path]).load_examples([path], "train")
    ]


def test_too_few_examples_for_one_step_is_a_data_error(write_jsonl):
    path = write_jsonl("rows.jsonl", numbered_rows(3))
    with pytest.raises(DataError, match="3 training examples cannot fill one optimizer step of 4"):
        datamodule([path], batch_size=4).train_dataloader()
