"""GRPO settings: one dataclass, checked before any model is loaded so a bad value costs nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from psft_lightning.errors import ConfigError
from psft_lightning.evaluation.answers import ANSWER_PATTERN


@dataclass
class GRPOSettings:
    """What one GRPO run does. ``batch_size`` counts prompts per optimizer step; each is sampled
    ``num_generations`` times, so a step scores ``batch_size * num_generations`` completions.

    ``answer_pattern`` (one capture group) reads the final answer from the model's response and, when it
    matches, from the row's ``answer_field`` too (a worked solution such as ``... The answer is 78.`` or
    ``... #### 72``); a field it does not match is the answer itself (``"final": 78``).
    """

    steps: int = 20
    lr: float = 1e-6
    num_generations: int = 4
    batch_size: int = 2
    max_new_tokens: int = 64
    temperature: float = 1.0
    beta: float = 0.0
    seed: int = 0
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    answer_pattern: str = ANSWER_PATTERN.pattern
    use_chat_template: bool = True
    bf16: bool = False

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"GRPO {name} must be >= 1, got {value}")
        if self.num_generations < 2:
            raise ConfigError(
                f"GRPO num_generations must be >= 2, got {self.num_generations}: the advantage of a "
                "completion is its reward minus the mean over the other samples of the same prompt"
            )
        if not self.lr > 0:
            raise ConfigError(f"GRPO lr must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ConfigError(f"GRPO temperature must be > 0 (GRPO samples), got {self.temperature}")
        if self.beta < 0:
            raise ConfigError(f"GRPO beta (the KL weight) must be >= 0, got {self.beta}")
        try:
            groups = re.compile(self.answer_pattern).groups
        except re.error as err:
            raise ConfigError(f"GRPO answer_pattern {self.answer_pattern!r} is not a regex: {err}") from err
        if groups != 1:
            raise ConfigError(
                f"GRPO answer_pattern {self.answer_pattern!r} must have exactly one capture group (the "
                f"answer), it has {groups}"
            )
