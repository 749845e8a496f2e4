"""Datasets and prompts of the bundled lm-eval tasks, from the project's own loaders and prompt, so a
row added to a bundled file is scored at once and lm-eval sees the items the built-in scorer sees.

lm-eval calls each ``custom_dataset`` with the task's metadata; ``psft eval`` puts the file locations
there (``ood_dir``, ``arithmetic_file``, relative to the working directory as everywhere in psft).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from psft_lightning.data.sources import read_rows
from psft_lightning.evaluation.ood import load_mc, mc_context
from psft_lightning.evaluation.suite import EvalConfig

DEFAULTS = EvalConfig()


def _test_split(rows: list[dict[str, Any]]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def general_knowledge(ood_dir: str = DEFAULTS.ood_dir, **_: Any):
    """The multiple-choice probe: ``question``, ``choices``, ``answer`` (index), checked by ``load_mc``."""
    items = load_mc(os.path.join(ood_dir, "general_knowledge.jsonl"))
    return _test_split([asdict(item) for item in items])


def arithmetic(arithmetic_file: str = DEFAULTS.eval_file, **_: Any):
    """The in-domain arithmetic rows: the question and the final answer as text, for exact match."""
    rows = [
        {"question": row[DEFAULTS.prompt_field], "final": str(row[DEFAULTS.final_field])}
        for row, _where in read_rows(arithmetic_file)
    ]
    return _test_split(rows)


def mc_text(doc: dict[str, Any]) -> str:
    """The built-in scorer's ARC prompt (``ood.mc_context``)."""
    return mc_context(doc["question"])
