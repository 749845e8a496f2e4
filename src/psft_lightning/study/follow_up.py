"""Claim 4's follow-up: GRPO from the study's selected SFT and PSFT checkpoints, then the evaluation
every run gets."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from psft_lightning.errors import ConfigError
from psft_lightning.rl import GRPOSettings, run_grpo
from psft_lightning.rl.grpo import PROMPTS_FILE
from psft_lightning.rl.outputs import read_jsonl
from psft_lightning.study import progress
from psft_lightning.study.budgets import Budget
from psft_lightning.study.runs import EXPORT_DIR, RunPlan, run, run_name
from psft_lightning.study.selection import Task

log = logging.getLogger(__name__)

# `psft study --rl` on a budget without its own ``rl``: GRPO long enough for the training reward to move
# measurably (docs/results.md). Two passes over 32 prompts (the reward change is paired per prompt); 8
# samples at temperature 1.5, since the selected checkpoints are near-deterministic: at 1.0 with 4 samples
# 50-100% of the groups had one reward for all (no GRPO signal) and the change was +0.008 [-0.094, +0.102];
# lr 2e-5 (5e-5 lowered reward and accuracy from both starts; 1e-5 barely moved)
RL_FOLLOW_UP = {
    "steps": 32,
    "batch_size": 2,
    "num_generations": 8,
    "max_new_tokens": 32,
    "temperature": 1.5,
    "lr": 2e-5,
    "prompts": 32,
    "bf16": True,
}


def follow_up(
    objective: str,
    start: dict,
    budget: Budget,
    task: Task,
    model: str,
    runs_dir: Path,
    root: Path,
    seed: int | None = None,
) -> dict:
    """Claim 4: GRPO (TRL's GRPOTrainer, exact-match reward on the training prompts) from ``start``'s
    exported selected checkpoint, then the evaluation every run gets (dev, test, OOD; drift still
    against the base model's own answers). ``seed`` (GRPO's sampling and data order) defaults to the
    start's; another seed is written under its own name. Kept when ``rl_<objective>[_seedN].json``
    exists with the same GRPO settings (``progress``)."""
    tag = "" if seed is None or seed == start["seed"] else f"_seed{seed}"
    seed = start["seed"] if seed is None else seed
    done = runs_dir / f"rl_{objective}{tag}.json"
    settings = {"seed": seed, **budget.rl}
    kept = progress.finished(done)
    if (
        kept is not None
        and kept.get("settings", {}).get("seed") == seed
        and progress.same_grpo(kept, budget.rl)
    ):
        log.info("GRPO from %s, seed %d: kept, finished by an earlier run of this study", kept["from"], seed)
        return kept
    start_dir = Path(start["folder"]) / EXPORT_DIR
    if not start_dir.is_dir():
        raise ConfigError(
            f"the RL follow-up starts from {start_dir}, which this study did not export (a study of an "
            "earlier version); pass --restart to run the study afresh"
        )
    rl = GRPOSettings(
        **settings,
        prompt_field=task.prompt_field,
        answer_field=task.final_field,
        completion_field=task.completion_field,
        answer_pattern=task.answer_pattern,
    )
    out = runs_dir / f"rl_{objective}{tag}"
    shutil.rmtree(out, ignore_errors=True)  # an unfinished or re-sized follow-up of the study: redone
    begin = time.perf_counter()
    steps = run_grpo(start_dir, runs_dir / "train_epoch.jsonl", out, rl)
    seconds = time.perf_counter() - begin
    plan = RunPlan(objective, None, str(out / "model"), seed, out, drift_model=model)
    after = run(plan, budget, task, root)
    name = run_name(objective, start["lr"])
    log.info("GRPO from %s, seed %d: %d steps, %.0f s", name, seed, len(steps), seconds)
    result = {"from": name, "seed": seed, "settings": settings, "steps": steps, "grpo_seconds": seconds}
    result["prompt_rewards"] = read_jsonl(out / PROMPTS_FILE)
    result["after"] = after
    progress.write_json(done, result)  # last: the follow-up is finished
    return result
