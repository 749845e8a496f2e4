"""The typed micro-batch: its loss positions, worked by hand, and the rule written in one place only."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from psft_lightning.data.batch import Batch
from psft_lightning.data.collate import collate_packed
from psft_lightning.data.formats import Example

SRC = Path(__file__).resolve().parent.parent / "src" / "psft_lightning"


def test_loss_positions_of_a_padded_batch():
    # row 0: prompt 5 6, answer 7 8; row 1: prompt 9, answer 4, padding
    batch = Batch.of(
        {
            "input_ids": torch.tensor([[5, 6, 7, 8], [9, 4, 0, 0]]),
            "labels": torch.tensor([[-100, -100, 7, 8], [-100, 4, -100, -100]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
            "extra": torch.zeros(1),  # a user's own key is left out
        }
    )
    assert batch.loss_mask.tolist() == [[False, True, True], [True, False, False]]
    assert batch.loss_targets.tolist() == [7, 8, 4]
    assert batch.num_loss_tokens == 3 and batch.loss_tokens_per_row() == [2, 1]
    assert sorted(batch.model_inputs()) == ["attention_mask", "input_ids"]
    assert batch.input_tokens().item() == 6.0  # attention mask, no num_input_tokens
    assert Batch.of(batch) is batch


def test_a_packed_row_never_predicts_the_next_examples_first_token():
    examples = [Example([1, 2, 3], [-100, 2, 3]), Example([4, 5], [-100, 5])]
    batch = Batch.of(collate_packed(examples, pad_id=0, pack_length=8))
    assert batch.loss_targets.tolist() == [2, 3, 5]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.input_tokens().item() == 5.0


def test_the_loss_position_rule_is_written_once():
    """``labels[:, 1:]`` and the comparison with -100 / IGNORE_INDEX on a batch live in data/batch.py."""
    rule = re.compile(r"\[:, 1:\]|!= ?-100|!= ?IGNORE_INDEX")
    found = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if any(rule.search(line) for line in path.read_text(encoding="utf-8").splitlines())
    }
    # formats.py and lengths.py count an example's (a plain list's) loss labels, not a batch's positions
    assert found == {"data/batch.py", "data/formats.py", "data/lengths.py"}
