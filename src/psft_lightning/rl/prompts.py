"""Prompt rows for GRPO and DPO: a question and its gold answer, read with the file and line of each row."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from psft_lightning.data.sources import read_rows
from psft_lightning.errors import DataError
from psft_lightning.evaluation.answers import reference_answer
from psft_lightning.rl.settings import TaskSettings


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    answer: str


def user_turn(text: str, chat: bool) -> str | list[dict[str, str]]:
    """A prompt as TRL takes it: a user turn when the chat template applies (TRL then renders it with
    ``add_generation_prompt``, as training renders prompts), else the text itself."""
    return [{"role": "user", "content": text}] if chat else text


def uses_chat(tokenizer, settings: TaskSettings) -> bool:
    return bool(settings.use_chat_template and getattr(tokenizer, "chat_template", None))


def load_prompts(path: Path, settings: TaskSettings) -> list[PromptRow]:
    """Every row of ``path`` as a prompt and the answer a completion must reach to earn reward 1."""
    pattern = re.compile(settings.answer_pattern)
    rows = []
    for row, where in read_rows(str(path)):
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        prompt = row.get(settings.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(
                f"{where}: field {settings.prompt_field!r} (the prompt) must be a non-empty string, got "
                f"{prompt!r:.80}; the row has {sorted(row)} (set prompt_field / --prompt-field)"
            )
        answer = reference_answer(row, settings.answer_field, settings.completion_field, pattern)
        if answer is None:
            raw = row.get(settings.answer_field)
            solution = settings.completion_field and (
                f", nor a {settings.completion_field!r} the answer pattern matches"
            )
            raise DataError(
                f"{where}: field {settings.answer_field!r} (the answer) must be a non-empty string or a "
                f"number, got {raw!r:.80}{solution}; the row has {sorted(row)} (set answer_field / "
                "--answer-field)"
            )
        rows.append(PromptRow(prompt, answer))
    return rows
