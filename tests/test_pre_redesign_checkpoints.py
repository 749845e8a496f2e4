"""Checkpoints written before the redesign resume: the state-dict keys (``policy.*``), the OldPolicy
callback state and the hyper-parameters load, and the resumed steps give that code's losses exactly."""

from __future__ import annotations

import json

import pytest
import torch
from pre_redesign import FIXTURES, LOSSES, resume
from tiny_run import arithmetic_data

from psft_lightning.errors import ConfigError


@pytest.mark.parametrize("name", ["snapshot", "lora"])
def test_a_pre_redesign_checkpoint_resumes_with_its_losses(name, tmp_path):
    checkpoint = FIXTURES / f"pre_redesign_{name}.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] == 3 and saved["callbacks"]["OldPolicy"]["last_refresh_step"] == 2
    assert all(key.startswith("policy.") for key in saved["state_dict"])
    expected = {int(k): v for k, v in json.loads(LOSSES.read_text(encoding="utf-8"))[name].items()}
    assert resume(name, checkpoint, tmp_path) == expected


def test_a_pre_redesign_checkpoint_of_another_objective_is_refused_with_why(tmp_path):
    import lightning as L

    from psft_lightning.module import PSFTModule

    module = PSFTModule(model="tiny", objective="ce")
    with pytest.raises(ConfigError, match="objective"):
        L.Trainer(logger=False, max_steps=4).fit(
            module, ckpt_path=str(FIXTURES / "pre_redesign_snapshot.ckpt"), datamodule=_data(tmp_path)
        )


def _data(root):
    from pre_redesign import write_files

    train, val = write_files(root)
    return arithmetic_data(train, val)
