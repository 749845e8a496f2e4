"""Hub datasets by name (``hub:org/name?name=...&split=...``), tested offline on a local dataset directory
laid out as a hub repository (configs in the README card), and the error when the hub is unreachable."""

from __future__ import annotations

import json

import datasets
import huggingface_hub.constants
import pytest

from psft_lightning.data import PSFTDataModule
from psft_lightning.data.hub import parse_hub
from psft_lightning.errors import ConfigError, DataError

CARD = """---
configs:
- config_name: easy
  data_files:
  - split: train
    path: easy/train.jsonl
  - split: test
    path: easy/test.jsonl
- config_name: hard
  data_files:
  - split: train
    path: hard/train.jsonl
---
"""


@pytest.fixture
def repo(tmp_path):
    """A dataset repository with two configs: ``easy`` (train: 4 rows, test: 2) and ``hard`` (train: 6)."""
    root = tmp_path / "repo"
    for config, split, n in (("easy", "train", 4), ("easy", "test", 2), ("hard", "train", 6)):
        (root / config).mkdir(parents=True, exist_ok=True)
        rows = [json.dumps({"prompt": f"{config} {split} {i}", "completion": "ok"}) for i in range(n)]
        (root / config / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "README.md").write_text(CARD, encoding="utf-8")
    return str(root)


def datamodule(train, val=None, **kwargs) -> PSFTDataModule:
    return PSFTDataModule(train, val_files=val, tokenizer="tiny", batch_size=2, val_fraction=0.0, **kwargs)


def prompts(tokenizer, examples) -> list[str]:
    return [tokenizer.decode(e.input_ids).split("\n")[1].removesuffix("<|im_end|>") for e in examples]


def test_configs_and_splits_by_name(repo, tokenizer):
    dm = datamodule([f"hub:{repo}?name=hard"], [f"hub:{repo}?name=easy&split=test"])
    dm.setup()
    assert prompts(tokenizer, dm.train_examples) == [f"hard train {i}" for i in range(6)]
    assert prompts(tokenizer, dm.val_examples) == ["easy test 0", "easy test 1"]
    sliced = datamodule([f"hub:{repo}?name=easy&split=train[:2]"])
    sliced.setup()
    assert len(sliced.train_examples) == 2


def test_row_errors_name_the_hub_dataset_split_and_row(tmp_path):
    (tmp_path / "bad").mkdir()
    rows = [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": ""}]
    (tmp_path / "bad" / "train.jsonl").write_text("\n".join(map(json.dumps, rows)), encoding="utf-8")
    with pytest.raises(DataError, match=r"^hub:.*/bad\[train\] row 1: field 'completion' is empty"):
        datamodule([f"hub:{tmp_path / 'bad'}"]).setup()


def test_unknown_config_or_split_lists_what_exists(repo):
    with pytest.raises(DataError, match=r"BuilderConfig 'nope' not found. Available: \['easy', 'hard'\]"):
        datamodule([f"hub:{repo}?name=nope"]).setup()
    with pytest.raises(
        DataError, match=r"Unknown split \"validation\". Should be one of \['train', 'test'\]"
    ):
        datamodule([f"hub:{repo}?name=easy"], [f"hub:{repo}?name=easy"]).setup()


@pytest.mark.parametrize(
    ("entry", "message"),
    [("hub:", "no dataset name"), ("hub:org/name?config=main", "unknown option 'config' \\(known: name, ")],
)
def test_malformed_entries_are_config_errors_up_front(entry, message):
    with pytest.raises(ConfigError, match=message):
        datamodule([entry])
    assert parse_hub("hub:org/name?revision=v1", "validation").split == "validation"


def test_unreachable_hub_says_so_and_how_to_work_offline(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DataError, match=r"hub:no-such-org/none: the Hugging Face hub is unreachable .*save_to_disk"
    ):
        datamodule(["hub:no-such-org/none"]).setup()
