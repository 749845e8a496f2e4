"""RL settings: dataclasses checked before any model is loaded, so a bad value costs nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from psft_lightning.errors import ConfigError
from psft_lightning.evaluation.answers import ANSWER_PATTERN


@dataclass
class TaskSettings:
    """What GRPO and DPO share: the data's fields, sampling and the optimizer (``batch_size`` and
    ``beta`` mean different things in each, see the subclasses).

    ``answer_pattern`` (one capture group) reads the final answer from the model's response and, when it
    matches, from the row's ``answer_field`` too (a worked solution such as ``... The answer is 78.`` or
    ``... #### 72``); a field it does not match is the answer itself (``"final": 78``). A row without
    ``answer_field`` has the last answer the pattern finds in its ``completion_field`` (none: such a row
    is refused).
    """

    steps: int = 20
    lr: float = 1e-6
    batch_size: int = 2
    beta: float = 0.0
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    completion_field: str = ""
    answer_pattern: str = ANSWER_PATTERN.pattern
    use_chat_template: bool = True
    bf16: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.kind} {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"{self.kind} lr must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ConfigError(f"{self.kind} temperature must be > 0 (it samples), got {self.temperature}")
        if self.beta < 0:
            raise ConfigError(f"{self.kind} beta must be >= 0, got {self.beta}")
        try:
            groups = re.compile(self.answer_pattern).groups
        except re.error as err:
            raise ConfigError(f"answer_pattern {self.answer_pattern!r} is not a regex: {err}") from err
        if groups != 1:
            raise ConfigError(
                f"answer_pattern {self.answer_pattern!r} must have exactly one capture group (the answer), "
                f"it has {groups}"
            )

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Settings")

    def trainer_kwargs(self, output_dir: str) -> dict:
        """The TRL config arguments both trainers take: one log row per step, no checkpoints, no hub
        and no trackers (``report_to``), fp32 unless ``bf16`` (TRL's own default is bf16 on). Without a
        GPU the run is told it is on the CPU (transformers refuses ``bf16`` there otherwise)."""
        import torch

        return {
            "use_cpu": not torch.cuda.is_available(),
            "output_dir": output_dir,
            "max_steps": self.steps,
            "learning_rate": self.lr,
            "lr_scheduler_type": "constant",  # a short run should not spend its last steps at lr ~ 0
            "gradient_accumulation_steps": 1,
            "beta": self.beta,
            "seed": self.seed,
            "data_seed": self.seed,
            "bf16": self.bf16,
            "activation_checkpointing": False,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": False,
        }


@dataclass
class GRPOSettings(TaskSettings):
    """``batch_size`` counts prompts per optimizer step; each is sampled ``num_generations`` times, so a
    step scores ``batch_size * num_generations`` completions. ``beta`` weighs the KL to the initial
    model (TRL's default 0: no reference model is kept). ``prompts`` > 0 trains on the first rows
    only, passing over them again as the steps go on (each prompt's reward per pass is logged)."""

    num_generations: int = 4
    prompts: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompts < 0:
            raise ConfigError(f"GRPO prompts must be >= 0 (0: every row), got {self.prompts}")
        if self.num_generations < 2:
            raise ConfigError(
                f"GRPO num_generations must be >= 2, got {self.num_generations}: the advantage of a "
                "completion is its reward minus the mean over the other samples of the same prompt"
            )


@dataclass
class DPOSettings(TaskSettings):
    """The model's own samples become preference pairs: ``samples`` completions for each of the first
    ``prompts`` rows, a correct one chosen over an incorrect one. ``batch_size`` counts pairs per
    optimizer step; ``beta`` is DPO's temperature (TRL's default 0.1)."""

    samples: int = 4
    prompts: int = 64
    batch_size: int = 4
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ConfigError(
                f"DPO samples must be >= 2, got {self.samples}: a pair needs a correct and an incorrect "
                "sample of the same prompt"
            )
        if self.prompts < 1:
            raise ConfigError(f"DPO prompts must be >= 1, got {self.prompts}")
