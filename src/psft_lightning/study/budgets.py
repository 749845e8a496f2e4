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


# steps, batch_size, max_length, lr, refresh_every, ce_warmup, eval_every of each budget
SIZES = {
    "smoke": (32, 8, 128, 5e-5, 8, 8, 8),
    "full": (125, 8, 256, 2e-5, 8, 16, 25),  # one epoch of the 1000 training rows
    "test": (4, 2, 96, 1e-3, 2, 2, 2),  # the tiny random model: the pipeline end to end in seconds (tests)
}
SMOKE_EVAL = {"num_eval": 16, "k": 4, "num_sampled": 8, "max_new_tokens": 48, "num_probe": 12}
TEST_EVAL = {"num_eval": 2, "k": 2, "max_new_tokens": 4, "num_probe": 2, "drift_max_new_tokens": 4}
BUDGETS = {
    "smoke": Budget(
        *SIZES["smoke"],
        periodic=("entropy",),
        eval={**SMOKE_EVAL, "num_mc": 48, "num_drift": 16, "num_if": 12, "if_max_new_tokens": 48},
        expected="under 20 minutes on 2 otherwise idle CPU cores",
    ),
    "full": Budget(
        *SIZES["full"],
        periodic=("accuracy", "entropy"),
        eval={"num_eval": 64, "k": 8, "num_sampled": 64, "max_new_tokens": 64, "num_probe": 64},
        seeds=(0, 1),
        expected="estimated, not measured: 2-3 hours per seed on 2 idle CPU cores (about 110 training "
        "tokens/s), well under an hour per seed on one GPU",
    ),
    "test": Budget(
        *SIZES["test"],
        periodic=("accuracy", "entropy"),
        eval={**TEST_EVAL, "num_mc": 2, "num_drift": 2, "num_if": 2, "if_max_new_tokens": 4},
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
