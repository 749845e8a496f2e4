"""Fixed-seed tiny runs of every built-in objective: their per-step ``train/loss`` and ``val/loss``.

``tests/loss_record.json`` holds these numbers as the code gave them before the objectives were
refactored; ``test_loss_record.py`` reruns the cases and asserts they are unchanged. Regenerate it
(``python tests/loss_record.py``) only for a change that is meant to move the numbers, and say so in
its commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from conftest import ARITHMETIC_TRAIN, StepLosses  # noqa: E402
from tiny_run import arithmetic_data  # noqa: E402

from psft_lightning.callbacks import OldPolicy  # noqa: E402
from psft_lightning.module import PSFTModule  # noqa: E402

RECORD = TESTS / "loss_record.json"
STEPS = 6
CASES: dict[str, dict] = {
    "ce": {"objective": "ce"},
    "kl": {"objective": "kl"},
    "psft": {"objective": "psft"},
    "psft_warmup": {"objective": "psft_warmup", "warmup_steps": 2},
    "psft_lookahead": {"objective": "psft", "mode": "lookahead"},
    "psft_lora": {"objective": "psft", "lora": {"r": 4}},
}
FSDP_KEY = "fsdp_2_process"  # the 2-process FSDP2 job of tests/fsdp_job.py, checked by test_fsdp.py


def write_files(root: Path) -> tuple[str, str]:
    """The first 24 / next 8 rows of the bundled arithmetic data, as the ``arithmetic_files`` fixture."""
    lines = ARITHMETIC_TRAIN.read_text(encoding="utf-8").splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:24]) + "\n", encoding="utf-8")
    (root / "val.jsonl").write_text("\n".join(lines[24:32]) + "\n", encoding="utf-8")
    return str(root / "train.jsonl"), str(root / "val.jsonl")


def run_case(case: dict, root: Path) -> dict[str, dict[str, float]]:
    """Train the tiny model ``STEPS`` steps (2 micro-batches per step, validation every 3 steps)."""
    from psft_lightning.objectives import PSFTWarmup

    L.seed_everything(0, verbose=False)
    train, val = write_files(root)
    data = arithmetic_data(train, val, batch_size=2)
    objective = PSFTWarmup(warmup_steps=case["warmup_steps"]) if "warmup_steps" in case else case["objective"]
    module = PSFTModule(
        model="tiny", objective=objective, lr=3e-3, schedule="constant", lora=case.get("lora")
    )
    recorder = StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        accumulate_grad_batches=2,
        val_check_interval=6,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[OldPolicy(refresh_every_n_steps=2, mode=case.get("mode", "snapshot")), recorder],
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=data)
    return {
        "train/loss": {str(k): v for k, v in sorted(recorder.losses.items())},
        "val/loss": {str(k): v for k, v in sorted(recorder.val_losses.items())},
    }


def record_fsdp() -> dict[str, dict]:
    """Per-step train and val losses of every run of the 2-process FSDP2 job."""
    from fsdp_job import launch, write_data

    with tempfile.TemporaryDirectory() as root:
        results = launch(write_data(Path(root) / "train.jsonl"), Path(root))
    return {
        name: {kind: runs[kind] for kind in ("train", "val")}
        for name, runs in results.items()
        if isinstance(runs, dict) and "train" in runs
    }


def record_all() -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the test suite runs
    try:
        out = {}
        for name, case in CASES.items():
            with tempfile.TemporaryDirectory() as root:
                out[name] = run_case(case, Path(root))
        out[FSDP_KEY] = record_fsdp()
        return out
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    RECORD.write_text(json.dumps(record_all(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {RECORD}")
