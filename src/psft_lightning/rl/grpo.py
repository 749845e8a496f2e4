"""``run_grpo``: TRL's GRPOTrainer on an exported model and a JSONL of prompts, one log row per step.

The model and tokenizer are loaded here and handed to TRL as objects, the reward is a Python
function and ``report_to`` is off, so nothing is fetched by name. TRL's own checkpoints are not
kept: the result is ``out_dir/model`` (a Hugging Face directory, as ``psft export`` writes) and
``out_dir/grpo_log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path

from psft_lightning.errors import ConfigError, DataError
from psft_lightning.export import _write_model
from psft_lightning.models import load_model, load_tokenizer
from psft_lightning.rl.prompts import PromptRow, load_prompts
from psft_lightning.rl.reward import exact_match_reward
from psft_lightning.rl.settings import GRPOSettings

log = logging.getLogger(__name__)

LOG_FILE = "grpo_log.jsonl"
MODEL_DIR = "model"
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


def check_model_dir(model_dir: Path) -> None:
    """An exported model directory, refused before TRL is imported."""
    if not (model_dir / "config.json").is_file():
        what = "does not exist" if not model_dir.exists() else "has no config.json"
        raise ConfigError(
            f"GRPO model {model_dir} {what}: give a Hugging Face model directory, e.g. one written by "
            "`psft export CHECKPOINT OUT_DIR`"
        )


def prompt_dataset(rows: list[PromptRow], use_chat_template: bool, tokenizer):
    """TRL's ``prompt`` column (a user turn, so TRL applies the chat template as training renders
    prompts) and the ``answer`` column the reward reads."""
    import datasets

    chat = use_chat_template and getattr(tokenizer, "chat_template", None)

    def prompt(text: str) -> str | list[dict[str, str]]:
        return [{"role": "user", "content": text}] if chat else text

    return datasets.Dataset.from_list([{"prompt": prompt(r.prompt), "answer": r.answer} for r in rows])


def grpo_config(settings: GRPOSettings, output_dir: str):
    """One generation round per optimizer step: ``batch_size`` prompts x ``num_generations`` samples."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        max_steps=settings.steps,
        learning_rate=settings.lr,
        lr_scheduler_type="constant",  # a short RL run should not spend its last steps at lr ~ 0
        per_device_train_batch_size=settings.batch_size * settings.num_generations,
        gradient_accumulation_steps=1,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        beta=settings.beta,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=settings.bf16,  # TRL's default is bf16 on; this library trains in fp32 unless asked
        activation_checkpointing=False,
        remove_unused_columns=False,  # the reward reads the answer column
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def step_rows(log_history: list[dict], seconds: list[float]) -> list[dict]:
    """One row per optimizer step from TRL's log history (its final summary row has no reward)."""
    rows = []
    for entry in log_history:
        if "reward" not in entry:
            continue
        row = {"step": int(entry["step"])}
        row.update({ours: entry[theirs] for theirs, ours in METRICS.items() if theirs in entry})
        if row["step"] <= len(seconds):
            row["seconds"] = seconds[row["step"] - 1]
        rows.append(row)
    return rows


def step_timer():
    """A callback that times each optimizer step, generation included."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def run_grpo(model_dir: Path, train_file: Path, out_dir: Path, settings: GRPOSettings) -> list[dict]:
    """Train ``model_dir`` with GRPO on ``train_file``'s prompts; the per-step log (also written to
    ``out_dir/grpo_log.jsonl``), with the trained model saved to ``out_dir/model``."""
    model_dir, train_file, out_dir = Path(model_dir), Path(train_file), Path(out_dir)
    check_model_dir(model_dir)
    rows = load_prompts(train_file, settings)
    if len(rows) < settings.batch_size:
        raise DataError(
            f"{train_file}: {len(rows)} prompts, fewer than batch_size {settings.batch_size} prompts per step"
        )
    from trl import GRPOTrainer

    model = load_model(str(model_dir))
    tokenizer = load_tokenizer(str(model_dir))
    timer = step_timer()
    with tempfile.TemporaryDirectory(prefix="psft-grpo-") as scratch:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=exact_match_reward(settings.answer_pattern),
            args=grpo_config(settings, scratch),
            train_dataset=prompt_dataset(rows, settings.use_chat_template, tokenizer),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()
    history = step_rows(trainer.state.log_history, timer.seconds)
    bad = [row["step"] for row in history if not all(math.isfinite(row[k]) for k in ("reward", "entropy"))]
    if bad:
        log.warning("GRPO steps %s logged a non-finite reward or entropy", bad)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_model(trainer.model, tokenizer, out_dir / MODEL_DIR)
    tokenizer.save_pretrained(out_dir / MODEL_DIR)
    with open(out_dir / LOG_FILE, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in history)
    log.info("GRPO: %d steps, model in %s", len(history), out_dir / MODEL_DIR)
    return history
