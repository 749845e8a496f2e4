"""``run_grpo``: TRL's GRPOTrainer on an exported model and a JSONL of prompts, one log row per step.

The model and tokenizer are loaded here and handed to TRL as objects, the reward is a Python
function and ``report_to`` is off, so nothing is fetched by name. The result is ``out_dir/model``,
``out_dir/grpo_log.jsonl`` and ``out_dir/grpo_prompt_rewards.jsonl`` (each prompt's rewards per pass).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from psft_lightning.errors import DataError
from psft_lightning.rl.model_dir import check_model_dir, load_exported
from psft_lightning.rl.outputs import save_run, step_rows, step_timer, write_jsonl
from psft_lightning.rl.prompts import PromptRow, load_prompts, user_turn, uses_chat
from psft_lightning.rl.requirements import require_trl
from psft_lightning.rl.reward import exact_match_reward, prompt_passes
from psft_lightning.rl.settings import GRPOSettings

LOG_FILE = "grpo_log.jsonl"
PROMPTS_FILE = "grpo_prompt_rewards.jsonl"  # every prompt's rewards at each pass over the prompts
# TRL's metric names -> the log's
METRICS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "entropy": "entropy",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
    "kl": "kl",
    "loss": "loss",
    "learning_rate": "lr",
}


def prompt_dataset(rows: list[PromptRow], chat: bool):
    """TRL's ``prompt`` column, the ``answer`` column the reward reads and each row's index."""
    import datasets

    columns = [
        {"prompt": user_turn(row.prompt, chat), "answer": row.answer, "prompt_index": index}
        for index, row in enumerate(rows)
    ]
    return datasets.Dataset.from_list(columns)


def grpo_config(settings: GRPOSettings, output_dir: str):
    """One generation round per optimizer step: ``batch_size`` prompts x ``num_generations`` samples."""
    return require_trl().GRPOConfig(
        **settings.trainer_kwargs(output_dir),
        per_device_train_batch_size=settings.batch_size * settings.num_generations,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        remove_unused_columns=False,  # the reward reads the answer column
    )


def run_grpo(model_dir: Path, train_file: Path, out_dir: Path, settings: GRPOSettings) -> list[dict]:
    """Train ``model_dir`` with GRPO on ``train_file``'s prompts; the per-step log (also written to
    ``out_dir/grpo_log.jsonl``), with the trained model saved to ``out_dir/model``."""
    model_dir, train_file, out_dir = Path(model_dir), Path(train_file), Path(out_dir)
    check_model_dir(model_dir)
    rows = load_prompts(train_file, settings)
    if settings.prompts:
        rows = rows[: settings.prompts]
    if len(rows) < settings.batch_size:
        raise DataError(
            f"{train_file}: {len(rows)} prompts, fewer than batch_size {settings.batch_size} prompts per step"
        )
    trl = require_trl()
    model, tokenizer = load_exported(model_dir)
    timer = step_timer()
    scored: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="psft-grpo-") as scratch:
        trainer = trl.GRPOTrainer(
            model=model,
            reward_funcs=exact_match_reward(settings.answer_pattern, scored),
            args=grpo_config(settings, scratch),
            train_dataset=prompt_dataset(rows, uses_chat(tokenizer, settings)),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()
    history = step_rows(trainer.state.log_history, timer.seconds, METRICS)
    save_run(trainer.model, tokenizer, out_dir, history, LOG_FILE)
    write_jsonl(out_dir / PROMPTS_FILE, prompt_passes(scored, settings.num_generations))
    return history
