"""``run_dpo``: preference pairs from the model's own samples, then TRL's DPOTrainer.

Each prompt is sampled ``samples`` times (as the evaluation samples: the prompt rendered as training
renders it, pure sampling at ``temperature``); a correct sample is chosen over an incorrect one of the
same prompt. Prompts the model always or never solves give no pair. The reference is a second copy
of the starting model, loaded here, so TRL never loads a model by name.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from psft_lightning.errors import DataError
from psft_lightning.evaluation.answers import same_answer
from psft_lightning.evaluation.generation import generate, render_prompts
from psft_lightning.evaluation.isolation import isolated
from psft_lightning.rl.model_dir import check_model_dir, load_exported
from psft_lightning.rl.outputs import save_run, step_rows, step_timer
from psft_lightning.rl.prompts import PromptRow, load_prompts, user_turn, uses_chat
from psft_lightning.rl.requirements import require_trl
from psft_lightning.rl.reward import response_answer
from psft_lightning.rl.settings import DPOSettings

LOG_FILE = "dpo_log.jsonl"
PAIRS_FILE = "dpo_pairs.jsonl"
# TRL's metric names -> the log's
METRICS = {
    "loss": "loss",
    "rewards/margins": "margin",
    "rewards/accuracies": "pair_accuracy",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "entropy": "entropy",
    "learning_rate": "lr",
}


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def preference_pairs(rows: list[PromptRow], samples: list[list[str]], answer_pattern: str) -> list[Pair]:
    """For each prompt, its correct samples paired in order with its incorrect ones (an answerless
    sample is incorrect); a prompt with only one kind gives none."""
    pattern = re.compile(answer_pattern)
    pairs = []
    for row, texts in zip(rows, samples, strict=True):
        right = [same_answer(response_answer(t, pattern), row.answer) for t in texts]
        correct = [t for t, ok in zip(texts, right, strict=True) if ok]
        wrong = [t for t, ok in zip(texts, right, strict=True) if not ok]
        pairs.extend(Pair(row.prompt, good, bad) for good, bad in zip(correct, wrong, strict=False))
    return pairs


def sample_pairs(model: nn.Module, tokenizer, rows: list[PromptRow], settings: DPOSettings) -> list[Pair]:
    prompts = render_prompts(tokenizer, [row.prompt for row in rows], uses_chat(tokenizer, settings))
    with isolated(model, settings.seed):
        texts = generate(
            model,
            tokenizer,
            prompts,
            settings.max_new_tokens,
            num_samples=settings.samples,
            temperature=settings.temperature,
        )
    return preference_pairs(rows, texts, settings.answer_pattern)


def pair_dataset(pairs: list[Pair], chat: bool):
    """TRL's preference columns; in chat form the completions are assistant turns."""
    import datasets

    def reply(text: str) -> str | list[dict[str, str]]:
        return [{"role": "assistant", "content": text}] if chat else text

    columns = [
        {"prompt": user_turn(p.prompt, chat), "chosen": reply(p.chosen), "rejected": reply(p.rejected)}
        for p in pairs
    ]
    return datasets.Dataset.from_list(columns)


def train_dpo(
    model: nn.Module, reference: nn.Module, tokenizer, pairs: list[Pair], out_dir: Path, settings: DPOSettings
) -> list[dict]:
    """DPO on ``pairs``; the per-step log, with the model saved to ``out_dir/model``."""
    trl, timer = require_trl(), step_timer()
    with tempfile.TemporaryDirectory(prefix="psft-dpo-") as scratch:
        kwargs = {**settings.trainer_kwargs(scratch), "per_device_train_batch_size": settings.batch_size}
        trainer = trl.DPOTrainer(
            model=model,
            ref_model=reference,
            args=trl.DPOConfig(**kwargs),
            train_dataset=pair_dataset(pairs, uses_chat(tokenizer, settings)),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()
    history = step_rows(trainer.state.log_history, timer.seconds, METRICS)
    save_run(trainer.model, tokenizer, Path(out_dir), history, LOG_FILE)
    return history


def run_dpo(model_dir: Path, train_file: Path, out_dir: Path, settings: DPOSettings) -> list[dict]:
    """Sample the first ``settings.prompts`` rows of ``train_file``, build pairs, train with DPO; the
    pairs are written to ``out_dir/dpo_pairs.jsonl`` beside the log and the model."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_model_dir(model_dir)
    require_trl()
    rows = load_prompts(Path(train_file), settings)[: settings.prompts]
    model, tokenizer = load_exported(model_dir)
    pairs = sample_pairs(model, tokenizer, rows, settings)
    if not pairs:
        raise DataError(
            f"{train_file}: no preference pair: none of the {len(rows)} prompts got both a correct and an "
            f"incorrect answer in {settings.samples} samples. Sample more (--samples, --prompts), or start "
            "from a model that solves some of them (a fine-tuned export)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / PAIRS_FILE, "w") as handle:
        handle.writelines(json.dumps(vars(pair)) + "\n" for pair in pairs)
    reference, _ = load_exported(model_dir)
    return train_dpo(model, reference, tokenizer, pairs, out_dir, settings)
