"""The Arrow cache: examples identical to the per-row Python loop, int32 memory-mapped columns, reuse on a
second start, and a new build for every change of what decides the tokens."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal

import pyarrow as pa
import pytest

from psft_lightning.data import Fields, PSFTDataModule, row_to_example
from psft_lightning.data.cache import cached_examples, default_cache_dir, tokenizer_fingerprint
from psft_lightning.data.lengths import fit_length
from psft_lightning.data.sources import read_rows
from psft_lightning.data.tokenise import TokenSettings
from psft_lightning.errors import DataError


def mixed_rows(n: int = 12) -> list[dict]:
    """All three formats, and every third row longer than max_length=40 (byte tokenizer)."""
    rows = []
    for i in range(n):
        long = "x" * 60 if i % 3 == 2 else ""
        rows.append({"prompt": f"q{i}", "completion": f"answer {i}{long}"})
        rows.append(
            {"messages": [{"role": "user", "content": f"m{i}"}, {"role": "assistant", "content": "ok"}]}
        )
        rows.append({"text": f"plain text {i}"})
    return rows


def datamodule(path, tmp_path, **kwargs) -> PSFTDataModule:
    kwargs = {"tokenizer": "tiny", "batch_size": 2, "val_fraction": 0.0, "max_length": 40, **kwargs}
    return PSFTDataModule([path], cache_dir=str(tmp_path / "cache"), **kwargs)


def python_loop(path, tokenizer, max_length: int = 40):
    """Today's path, row by row: the examples kept and the number truncated."""
    kept, truncated = [], 0
    for row, where in read_rows(path):
        example = row_to_example(row, tokenizer, "auto", Fields(), True, where)
        fitted, _ = fit_length(example, max_length, "truncate", where)
        truncated += fitted is not example
        kept.append(fitted)
    return kept, truncated


@pytest.mark.parametrize("num_proc", [1, 2])
def test_tokens_are_those_of_the_python_loop(num_proc, write_jsonl, tokenizer, tmp_path):
    path = write_jsonl("mixed.jsonl", mixed_rows())
    dm = datamodule(path, tmp_path, num_proc=num_proc)
    dm.setup()
    expected, truncated = python_loop(path, tokenizer)
    got = list(dm.train_examples)
    assert len(got) == 36 and truncated == 4
    assert [e.input_ids for e in got] == [e.input_ids for e in expected]
    assert [e.labels for e in got] == [e.labels for e in expected]
    assert dm.train_examples.loss_tokens.tolist() == [e.num_loss_tokens for e in expected]
    assert dm.overlong_report["train"].truncated == 4
    assert dm.overlong_report["train"].examples == [f"{path}:7", f"{path}:16", f"{path}:25"]


def test_examples_are_int32_columns_memory_mapped_from_the_cache(write_jsonl, tmp_path):
    path = write_jsonl("mixed.jsonl", mixed_rows(40))
    dm = datamodule(path, tmp_path)
    dm.prepare_data()  # build the entry, then map it as a later start does
    before = pa.total_allocated_bytes()
    dm.setup()
    table = dm.train_examples.table
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.schema.field("labels").type == pa.list_(pa.int32())
    assert dm.train_examples.lengths.dtype.name == "int32"
    tokens = int(dm.train_examples.lengths.sum())
    assert tokens > 2500
    assert pa.total_allocated_bytes() - before < tokens  # 8 bytes per token live in the mapped file
    (entry,) = dm.tokenised
    assert os.path.getsize(os.path.join(entry, "examples.arrow")) > 8 * tokens


def test_a_second_start_maps_the_cache_and_reports_the_same(write_jsonl, tmp_path, caplog):
    path = write_jsonl("mixed.jsonl", mixed_rows())
    first = datamodule(path, tmp_path, val_files=[path])
    with caplog.at_level(logging.INFO, logger="psft_lightning.data"):
        first.setup()
    assert len(first.tokenised) == 1  # train and validation read the same file: one entry
    assert "train data: tokenised" in caplog.text
    caplog.clear()
    second = datamodule(path, tmp_path, val_files=[path])
    with caplog.at_level(logging.INFO, logger="psft_lightning.data"):
        second.setup()
    assert second.tokenised == []
    assert f"train data: {path}: using the tokenised cache {first.tokenised[0]}" in caplog.text
    assert "train data: truncated 4 of 36 examples to max_length=40" in caplog.text
    assert second.overlong_report == first.overlong_report
    assert [e.input_ids for e in second.train_examples] == [e.input_ids for e in first.train_examples]


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 64},
        {"overlong": "skip"},
        {"use_chat_template": False},
        {"format": "prompt_completion"},
        {"fields": {"completion": "answer"}},
    ],
)
def test_each_setting_that_decides_the_tokens_rebuilds(change, write_jsonl, tmp_path):
    path = write_jsonl("pc.jsonl", [{"prompt": "q", "completion": "a", "answer": "b"}] * 4)
    datamodule(path, tmp_path).setup()
    again = datamodule(path, tmp_path, **change)
    again.setup()
    assert len(again.tokenised) == 1


def test_file_contents_and_location_rebuild_a_touch_does_not(write_jsonl, tokenizer, tmp_path):
    rows = [{"prompt": "q", "completion": "a"}] * 4
    path = write_jsonl("pc.jsonl", rows)
    datamodule(path, tmp_path).setup()
    os.utime(path)  # same bytes: same entry
    touched = datamodule(path, tmp_path)
    touched.prepare_data()
    touched.setup()
    assert touched.tokenised == []
    write_jsonl("pc.jsonl", [{"prompt": "q", "completion": "b"}] * 4)
    changed = datamodule(path, tmp_path)
    changed.setup()
    assert len(changed.tokenised) == 1
    assert all("assistant\nb<|im_end|>" in tokenizer.decode(e.input_ids) for e in changed.train_examples)
    moved = datamodule(write_jsonl("copy.jsonl", rows), tmp_path)  # messages name the file it is in
    moved.setup()
    assert len(moved.tokenised) == 1


def test_tokenizer_fingerprint_follows_vocabulary_and_template(tokenizer):
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = tokenizer.chat_template + " "
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["<new>"])
    prints = {tokenizer_fingerprint(t) for t in (tokenizer, copy.deepcopy(tokenizer), templated, grown)}
    assert len(prints) == 3


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PSFT_DATA_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("PSFT_DATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "psft_lightning" / "data")


def test_a_builder_that_loses_the_race_maps_the_winner(write_jsonl, tokenizer, tmp_path, monkeypatch):
    path = write_jsonl("pc.jsonl", [{"prompt": "q", "completion": "a"}] * 4)
    settings = TokenSettings("auto", Fields(), True, 40, "truncate")
    cache = str(tmp_path / "cache")
    winner = cached_examples(path, "train", tokenizer, settings, cache, 1)
    stored = str(tmp_path / "stored")
    shutil.move(winner.directory, stored)
    real_rename = os.rename

    def rename(src, dst):  # the other process stores the entry while this one builds it
        if dst == winner.directory:
            shutil.copytree(stored, dst)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    entry = cached_examples(path, "train", tokenizer, settings, cache, 1)
    assert not entry.built and entry.directory == winner.directory
    assert sorted(os.listdir(cache)) == [os.path.basename(winner.directory)]  # no leftover build


def test_a_row_error_in_a_worker_keeps_its_location(write_jsonl, tmp_path):
    """Also under a run's SIGTERM handler (psft's checkpoint-and-stop): ``datasets`` ends the pool of a
    failed map with SIGTERM, which forked workers must not inherit a handler for (else: a hang)."""
    rows = [{"prompt": "q", "completion": "a"}] * 1200 + [{"prompt": "q", "completion": 3}]
    path = write_jsonl("bad.jsonl", rows)

    def checkpoint_and_stop(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, checkpoint_and_stop)
    try:
        with pytest.raises(DataError, match=rf"{path}:1201: field 'completion' must be a string, got int"):
            datamodule(path, tmp_path, num_proc=2).setup()
        assert signal.getsignal(signal.SIGTERM) is checkpoint_and_stop  # the run's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.listdir(tmp_path / "cache") == []  # a failed build leaves nothing behind
