"""The study's budgets: training and evaluation sizes, and the objectives it compares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from psft_lightning.evaluation import EvalConfig

OBJECTIVES = {"ce": "sft.yaml", "kl": "sft_kl.yaml", "psft": "psft.yaml", "psft_warmup": "psft_warmup.yaml"}
LABELS = {"base": "base model", "ce": "SFT", "kl": "SFT-KL", "psft": "PSFT", "psft_warmup": "PSFT (warm-up)"}
PAPER = "https://arxiv.org/abs/2508.17784"


@dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes of one reproduction budget."""

    steps: int
    batch_size: int
    max_length: int
    lr: float
    refresh_every: int  # OldPolicy snapshot interval (optimizer steps)
    ce_warmup: int  # CE steps of psft_warmup before PSFT
    eval_every: int
    periodic: tuple[str, ...]
    eval: dict = field(default_factory=dict)  # EvalConfig overrides
    seeds: tuple[int, ...] = (0,)
    model: str = "smollm2-135m-instruct"
    train_file: str = "data/arithmetic/train.jsonl"
    expected: str = ""


BUDGETS = {
    "smoke": Budget(
        steps=32,
        batch_size=8,
        max_length=128,
        lr=5e-5,
        refresh_every=8,
        ce_warmup=8,
        eval_every=8,
        periodic=("entropy",),
        eval={
            "num_eval": 16,
            "k": 4,
            "num_sampled": 8,
            "max_new_tokens": 48,
            "num_probe": 12,
            "num_mc": 48,
            "num_drift": 16,
            "num_if": 12,
            "if_max_new_tokens": 48,
        },
        expected="under 20 minutes on 2 otherwise idle CPU cores",
    ),
    "full": Budget(
        steps=125,  # one epoch of the 1000 training rows
        batch_size=8,
        max_length=256,
        lr=2e-5,
        refresh_every=8,
        ce_warmup=16,
        eval_every=25,
        periodic=("accuracy", "entropy"),
        eval={"num_eval": 64, "k": 8, "num_sampled": 64, "max_new_tokens": 64, "num_probe": 64},
        seeds=(0, 1),
        expected="estimated, not measured: 2-3 hours per seed on 2 idle CPU cores (about 110 training "
        "tokens/s), well under an hour per seed on one GPU",
    ),
    "test": Budget(  # the tiny random model: the pipeline end to end in seconds (tests)
        steps=4,
        batch_size=2,
        max_length=96,
        lr=1e-3,
        refresh_every=2,
        ce_warmup=2,
        eval_every=2,
        periodic=("accuracy", "entropy"),
        eval={
            "num_eval": 2,
            "k": 2,
            "max_new_tokens": 4,
            "num_probe": 2,
            "num_mc": 2,
            "num_drift": 2,
            "num_if": 2,
            "if_max_new_tokens": 4,
            "drift_max_new_tokens": 4,
        },
        model="tiny",
        train_file="data/arithmetic/val.jsonl",  # 64 rows tokenise at once; the pipeline is what is tested
        expected="seconds",
    ),
}


def eval_config(budget: Budget, root: Path) -> dict:
    """EvalConfig of the budget with absolute paths (from ``root``), as plain data for a YAML config."""
    config = asdict(EvalConfig(**budget.eval))
    config["eval_file"] = str(root / config["eval_file"])
    config["ood_dir"] = str(root / config["ood_dir"])
    return config
