"""Shared pytest fixtures: every test starts from the same torch RNG state."""

import json
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ARITHMETIC_TRAIN = REPO / "data" / "arithmetic" / "train.jsonl"


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """Tokenised data (and what ``load_dataset`` prepares from hub: entries) goes to caches of this
    session, inherited by the psft processes tests start, never to the user's ~/.cache."""
    import datasets

    os.environ["PSFT_DATA_CACHE"] = str(tmp_path_factory.mktemp("data_cache"))
    os.environ["HF_DATASETS_CACHE"] = datasets.config.HF_DATASETS_CACHE = str(tmp_path_factory.mktemp("hf"))
    yield


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


def _kept_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# Lightning writes rendezvous variables (LOCAL_RANK, MASTER_PORT, ...) into os.environ when a test (or a
# module's fixture) builds a multi-process trainer in this process; a later ``psft`` subprocess inherited
# LOCAL_RANK, took its processes for launched externally and waited forever for a rank never started.
_restore_environ_per_module = pytest.fixture(scope="module", autouse=True)(_kept_environ)
_restore_environ_per_test = pytest.fixture(autouse=True)(_kept_environ)


@pytest.fixture
def tokenizer():
    """The byte-level ``tiny`` tokenizer (ChatML template, EOS ``<|im_end|>``)."""
    from psft_lightning.models import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts, or raw strings written as they are) to ``tmp_path/name``, one per line."""

    def write(name: str, rows: list) -> str:
        path = tmp_path / name
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def arithmetic_files(tmp_path):
    """The first rows of the bundled arithmetic data as small train (24 rows) and val (8 rows) files."""
    lines = ARITHMETIC_TRAIN.read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:24]) + "\n", encoding="utf-8")
    (tmp_path / "val.jsonl").write_text("\n".join(lines[24:32]) + "\n", encoding="utf-8")
    return str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl")


@pytest.fixture
def clean_registry():
    """Drop whatever a test adds to the objective registry (and its plugin modules) afterwards."""
    from psft_lightning.objectives import base

    before = dict(base._REGISTRY)
    modules = set(sys.modules)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(before)
    for name in set(sys.modules) - modules:
        if name.startswith(("myplug", "brokenplug", "psft_focal", "psft_entropy")):
            del sys.modules[name]


class StepLosses(L.Callback):
    """Records ``metric`` (``train/loss``) of every optimizer step, keyed by the step's index
    (0-based), and ``val/loss`` of every validation, keyed by the number of steps taken before it."""

    def __init__(self, metric: str = "train/loss") -> None:
        self.metric = metric
        self.losses: dict[int, float] = {}
        self.val_losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.metric in trainer.callback_metrics:
            self.losses[trainer.global_step - 1] = float(trainer.callback_metrics[self.metric])

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.val_losses[trainer.global_step] = float(trainer.callback_metrics["val/loss"])


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch on one thread in every test: tiny models gain nothing from threads, and on a busy
    2-core CI box their spin-waits cost up to 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
