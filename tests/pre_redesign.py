"""Checkpoints written by the code before the redesign (commit 24e1fe1), and the losses that code gave
when it resumed from them: ``python tests/pre_redesign.py`` on that commit wrote ``tests/fixtures/``.

Each is a 3-step PSFT run of a 1-layer tiny model (``tiny_run.train_tiny``), snapshot and LoRA; resumed
to step 5 with a fresh ``OldPolicy``, steps 3 and 4 are recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from conftest import ARITHMETIC_TRAIN, StepLosses  # noqa: E402
from tiny_run import arithmetic_data  # noqa: E402

from psft_lightning.callbacks import OldPolicy  # noqa: E402
from psft_lightning.module import PSFTModule  # noqa: E402

FIXTURES = TESTS / "fixtures"
LOSSES = FIXTURES / "pre_redesign_resumed_losses.json"
TINY = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}
CASES = {"snapshot": {}, "lora": {"lora": {"r": 2}}}


def write_files(root: Path) -> tuple[str, str]:
    lines = ARITHMETIC_TRAIN.read_text(encoding="utf-8").splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:24]) + "\n", encoding="utf-8")
    (root / "val.jsonl").write_text("\n".join(lines[24:32]) + "\n", encoding="utf-8")
    return str(root / "train.jsonl"), str(root / "val.jsonl")


def module_kwargs(name: str) -> dict:
    return {
        "objective": "psft",
        "lr": 3e-3,
        "tiny_config": {**TINY, "num_hidden_layers": 1},
        **CASES[name],
    }


def resume(name: str, checkpoint: Path, root: Path, steps: int = 5) -> dict[int, float]:
    """Resume ``checkpoint`` to ``steps`` steps; the training loss of each resumed step."""
    root.mkdir(parents=True, exist_ok=True)
    train, val = write_files(root)
    data = arithmetic_data(train, val, max_length=128, batch_size=2)
    losses = StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[OldPolicy(refresh_every_n_steps=2), losses],
    )
    trainer.fit(PSFTModule(model="tiny", **module_kwargs(name)), datamodule=data, ckpt_path=str(checkpoint))
    return losses.losses


def write_fixtures(root: Path) -> None:
    from tiny_run import train_tiny

    torch.set_num_threads(1)
    FIXTURES.mkdir(exist_ok=True)
    files = write_files(root)
    out = {}
    for name in CASES:
        _, last = train_tiny(root / name, files, steps=3, **module_kwargs(name))
        target = FIXTURES / f"pre_redesign_{name}.ckpt"
        target.write_bytes(last.read_bytes())
        out[name] = {str(k): v for k, v in resume(name, target, root / f"{name}_resumed").items()}
    LOSSES.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_fixtures(Path(tmp))
