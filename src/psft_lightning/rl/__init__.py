"""The RL follow-up: GRPO (TRL's GRPOTrainer) on an exported model with an exact-match reward."""

from psft_lightning.rl.grpo import run_grpo
from psft_lightning.rl.prompts import PromptRow, load_prompts
from psft_lightning.rl.reward import exact_match_reward, gold_answer, response_answer
from psft_lightning.rl.settings import GRPOSettings

__all__ = [
    "GRPOSettings",
    "PromptRow",
    "exact_match_reward",
    "gold_answer",
    "load_prompts",
    "response_answer",
    "run_grpo",
]
