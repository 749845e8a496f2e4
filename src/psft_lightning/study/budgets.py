"""The study's budgets: data sizes, epochs, the lr grid, evaluation sizes, seeds, and what they cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from psft_lightning.evaluation import EvalConfig
from psft_lightning.rl.settings import GRPOSettings
from psft_lightning.study.objectives import study_objectives
from psft_lightning.study.rates import (
    BASE_ANSWER_COST,
    SECONDS_PER_PROBE_ROW,
    SECONDS_PER_RL_TOKEN,
    SECONDS_PER_RUN,
    SECONDS_PER_TRAIN_TOKEN,
    TOKENS_PER_ROW,
    TRAIN_COST,
    answer_seconds,
    ood_cost,
    set_cost,
)


class Labels(dict):
    """How the results page names an objective; one without a label here shows its registered name."""

    def __missing__(self, name: str) -> str:
        return name


LABELS = Labels(
    {
        "base": "base model",
        "ce": "SFT",
        "kl": "SFT-KL",
        "psft": "PSFT",
        "psft_warmup": "PSFT (warm-up)",
        "dft": "DFT",
        "asft": "ASFT",
        "prob": "Prob",
        "gift": "GIFT",
        "eaft": "EAFT",
        "deft": "DEFT",
        "trsft": "TrSFT",
        "eksft": "EKSFT",
    }
)
PAPER = "https://arxiv.org/abs/2508.17784"


@dataclass(frozen=True)
class Budget:
    """Sizes of one study budget.

    ``lrs`` is the grid tried at the first seed (an objective not named there trains at ``lr``, or at
    its config's lr when that is None); every later seed re-runs the objectives in ``rerun`` at their
    selected lr. ``refresh_sweep`` (``psft study --refresh-sweep``) re-runs PSFT at its selected lr and
    first seed at each of those old-policy refresh intervals (``study/refresh.py``).
    """

    train_rows: int  # a seeded sample of N training rows is one epoch (``runs.epoch_file``)
    epochs: int  # a dev checkpoint at the end of each
    batch_size: int
    max_length: int
    refresh_every: int  # OldPolicy snapshot interval (optimizer steps)
    ce_warmup: int  # CE steps of psft_warmup before PSFT
    entropy_every: int  # interval of the probe-entropy curve (optimizer steps)
    scoring: dict  # Scoring overrides: dev/test sizes, k
    eval: dict  # EvalConfig overrides: the entropy probe and the OOD sets
    lrs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    lr: float | None = None
    peer_scoring: dict = field(default_factory=dict)  # Scoring overrides of objectives outside ``lrs``
    seeds: tuple[int, ...] = (0, 1)
    rerun: tuple[str, ...] | None = ("ce", "psft")  # None: every objective
    precision: str = "bf16-mixed"
    model: str = "smollm2-135m-instruct"
    expected: str = ""
    rl: dict = field(default_factory=dict)  # GRPOSettings overrides of the RL follow-up; empty: none
    rl_from: tuple[str, ...] = ("ce", "psft")  # whose selected checkpoints (first seed) start GRPO
    refresh_sweep: tuple[int | str, ...] = ()  # PSFT's refresh intervals beyond the study; "never" too
    # claim 3 at matched in-domain score (``study/frontier.py``): these objectives' runs (the grid and
    # the re-runs) measure these OOD sets at every epoch checkpoint, not only at the selected one
    frontier: tuple[str, ...] = ("ce", "psft")
    frontier_ood: tuple[str, ...] = ("drift", "mc")
    # the OOD sets of the objectives outside ``lrs`` at their selected checkpoint: the table's columns;
    # claim 4 needs drift (SFT-KL and PSFT warm-up) and nothing decides on their MC or IF
    peer_ood: tuple[str, ...] = ("mc", "drift", "if")

    def reruns(self) -> tuple[str, ...]:
        """The objectives re-run at every later seed."""
        return tuple(study_objectives()) if self.rerun is None else self.rerun

    def runs(self) -> int:
        """Trained runs of the study (the base model's evaluation not counted)."""
        grid = sum(len(self.lrs.get(name, (None,))) for name in study_objectives())
        return grid + len(self.reruns()) * (len(self.seeds) - 1) + self.sweep_runs()

    def final_sets(self, objective: str) -> list[str]:
        """The OOD sets ``objective``'s selected checkpoint is measured on."""
        return ["mc", "drift", "if"] if objective in self.lrs else list(self.peer_ood)

    def frontier_sets(self, objective: str) -> list[str]:
        """The OOD sets ``objective``'s runs measure after every epoch (none off the frontier)."""
        return list(self.frontier_ood) if objective in self.frontier else []

    def frontier_runs(self) -> int:
        """Runs whose every epoch checkpoint is a frontier point."""
        return sum(
            len(self.lrs.get(name, (None,))) + (len(self.seeds) - 1) * (name in self.reruns())
            for name in self.frontier
            if name in study_objectives()
        )

    def sweep_runs(self) -> int:
        """Runs the refresh sweep adds: every interval but the study's own (that run is reused)."""
        return sum(every != self.refresh_every for every in self.refresh_sweep)

    def scoring_of(self, objective: str | None) -> dict:
        """Scoring overrides of one objective (None: the base model, scored like the grid's)."""
        peer = objective is not None and objective not in self.lrs
        return {**self.scoring, **(self.peer_scoring if peer else {})}

    def estimate(self) -> float | None:
        """Seconds on 2 idle CPU cores by the rates above (None for the tiny model, whose cost they do
        not describe): per run, the fixed cost, its test answers (greedy, and k samples on
        ``num_sampled``), and for a trained run its training tokens and dev answers after each epoch."""
        if self.model == "tiny":
            return None

        def test(scoring: dict) -> float:
            sampled = scoring.get("num_sampled") or scoring["num_test"]
            return (scoring["num_test"] + sampled * scoring["k"]) * answer

        answer = answer_seconds(self.scoring.get("batch_size", 16))
        train = self.train_rows * self.epochs * TOKENS_PER_ROW * SECONDS_PER_TRAIN_TOKEN[self.precision]
        fixed = SECONDS_PER_RUN + self.ood_seconds()
        steps = self.train_rows * self.epochs // self.batch_size
        at_epochs = self.epochs if steps // self.epochs % self.entropy_every else 0  # the probe at each epoch
        probe = EvalConfig(**self.eval).num_probe * SECONDS_PER_PROBE_ROW
        probes = (steps // self.entropy_every + at_epochs) * probe

        # SECONDS_PER_RUN holds one probe, which a trained run no longer makes at step 0 (the base run's)
        def trained(objective: str) -> float:  # and its dev answers after each epoch
            dev = self.epochs * self.scoring_of(objective)["num_dev"] * answer
            cost = TRAIN_COST.get(objective, 1.0)
            return cost * train + probes - probe + dev + fixed + test(self.scoring_of(objective))

        total = fixed + BASE_ANSWER_COST * test(self.scoring)  # the base model
        for objective in study_objectives():
            runs = len(self.lrs.get(objective, (None,))) + (len(self.seeds) - 1) * (
                objective in self.reruns()
            )
            total += runs * trained(objective)
        total += self.sweep_runs() * trained("psft")
        config = EvalConfig(**self.eval)
        skipped = sum(set_cost(config, s) for s in ("mc", "drift", "if") if s not in self.peer_ood)
        peers = [name for name in study_objectives() if name not in self.lrs]
        total -= skipped * sum(1 + (len(self.seeds) - 1) * (name in self.reruns()) for name in peers)
        # the frontier's sets at every epoch but the selected one (which the final sets would measure)
        total += (
            self.frontier_runs() * (self.epochs - 1) * sum(set_cost(config, s) for s in self.frontier_ood)
        )
        if self.rl:  # GRPO, then the evaluation of its model, from each selected checkpoint
            rl = GRPOSettings(**self.rl)
            sampled = rl.steps * rl.batch_size * rl.num_generations * rl.max_new_tokens
            evaluated = fixed + test(self.scoring)
            rate = SECONDS_PER_RL_TOKEN["bf16" if rl.bf16 else "fp32"]
            total += len(self.rl_from) * (sampled * rate + evaluated)
        return total

    def ood_seconds(self) -> float:
        """What this budget's OOD sets cost beyond SMALL_OOD's, which SECONDS_PER_RUN already holds."""
        return ood_cost(self.eval) - ood_cost(SMALL_OOD)


SMALL_OOD = {"num_probe": 16, "num_mc": 48, "num_drift": 16, "num_if": 12, "if_max_new_tokens": 48}
# every OOD probe of the standard study with >= 50 items (one item < 2 points): all 64 instructions and IF
# prompts, 64 of the 208 multiple-choice questions (100 until DEFT, TrSFT and EKSFT joined the peers; the
# frontier's per-epoch MC and drift fit beside them since peers measure drift only and each objective's
# estimate counts its own dev size)
STANDARD_OOD = {
    "num_probe": 16,
    "num_mc": 64,
    "num_drift": 64,
    "num_if": 64,
    "if_max_new_tokens": 48,
    "batch_size": 64,
}
BUDGETS = {
    "test": Budget(
        train_rows=16,
        epochs=2,
        batch_size=2,
        max_length=192,
        refresh_every=2,
        ce_warmup=2,
        entropy_every=2,
        scoring={"num_dev": 4, "num_test": 6, "k": 2, "max_new_tokens": 4},
        eval={
            "num_probe": 2,
            "num_mc": 2,
            "num_drift": 2,
            "num_if": 2,
            "drift_max_new_tokens": 4,
            "if_max_new_tokens": 4,
        },
        lrs={"ce": (1e-3, 3e-3), "psft": (1e-3, 3e-3)},
        lr=1e-3,
        peer_scoring={"num_test": 4},
        precision="32-true",
        model="tiny",
        rl={"steps": 2, "batch_size": 2, "num_generations": 2, "max_new_tokens": 4, "lr": 1e-3, "prompts": 2},
        expected="seconds (the tiny random model: the whole pipeline, in the tests)",
    ),
    "smoke": Budget(  # 24 rows and 16 peer questions keep it under 20 minutes with the 2026 peers
        train_rows=24,
        epochs=2,
        batch_size=8,
        max_length=128,
        refresh_every=4,
        ce_warmup=2,
        entropy_every=4,
        scoring={
            "num_dev": 16,
            "num_test": 64,
            "k": 2,
            "num_sampled": 16,
            "max_new_tokens": 48,
            "batch_size": 64,
        },
        peer_scoring={"num_test": 16, "num_sampled": 8},
        eval=SMALL_OOD,
        peer_ood=("drift",),
        lrs={"ce": (2e-5, 5e-5), "psft": (2e-5, 5e-5)},
        seeds=(0,),
        rerun=(),
        expected="under 20 minutes on 2 idle CPU cores (estimate below)",
    ),
    "standard": Budget(  # docs/calibration.md: off the floor, +-6 points paired, within 90 minutes
        train_rows=128,  # 192 reached 80% dev at lr 1e-4 but ran over 90 minutes (about 97)
        epochs=2,
        batch_size=8,
        max_length=128,
        refresh_every=8,  # the paper's 8 updates per snapshot (global batch 64, mini-batch 8)
        ce_warmup=8,
        entropy_every=8,  # the probe twice per epoch (train/entropy is logged every step)
        scoring={
            "num_dev": 128,  # one question is 0.8 points
            "num_test": 512,  # a paired difference to about +-5 points
            "k": 2,
            "num_sampled": 32,
            "max_new_tokens": 48,
            "batch_size": 64,
        },
        # the peers' lr is fixed, so dev only picks their epoch: 32 questions; their test is informative
        peer_scoring={"num_dev": 32, "num_test": 64, "num_sampled": 16},
        eval=STANDARD_OOD,
        peer_ood=("drift",),
        lrs={"ce": (1e-4, 3e-4), "psft": (1e-4, 3e-4)},
        lr=2e-4,
        expected="under 90 minutes on 2 idle CPU cores (estimate below)",
    ),
    "full": Budget(
        train_rows=1000,
        epochs=4,
        batch_size=8,
        max_length=256,
        refresh_every=8,
        ce_warmup=16,
        entropy_every=25,
        scoring={"num_dev": 128, "num_test": 256, "k": 8, "max_new_tokens": 64},
        eval={"num_probe": 64},
        lrs={"ce": (1e-5, 2e-5, 5e-5), "psft": (5e-6, 2e-5, 5e-5), "psft_warmup": (2e-5, 5e-5)},
        seeds=(0, 1, 2),
        rerun=None,
        expected="GPU-sized: about a day on 2 CPU cores (estimate below); not yet timed on a GPU",
    ),
}


def eval_config(budget: Budget, root: Path, probe_file: Path, fields: dict[str, str]) -> dict:
    """EvalConfig of the budget (entropy probe on ``probe_file``, the OOD sets under ``root``) as plain
    data for a YAML config."""
    config = asdict(EvalConfig(**budget.eval))
    config.update(eval_file=str(probe_file), ood_dir=str(root / config["ood_dir"]), **fields)
    return config
