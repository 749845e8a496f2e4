"""The RL follow-up on an exported model: GRPO (TRL's GRPOTrainer) with an exact-match reward, and
DPO (TRL's DPOTrainer) on pairs of the model's own correct and incorrect samples."""

from psft_lightning.rl.dpo import Pair, preference_pairs, run_dpo, train_dpo
from psft_lightning.rl.grpo import run_grpo
from psft_lightning.rl.prompts import PromptRow, load_prompts
from psft_lightning.rl.reward import exact_match_reward, gold_answer, response_answer
from psft_lightning.rl.settings import DPOSettings, GRPOSettings, TaskSettings

__all__ = [
    "DPOSettings",
    "GRPOSettings",
    "Pair",
    "PromptRow",
    "TaskSettings",
    "exact_match_reward",
    "gold_answer",
    "load_prompts",
    "preference_pairs",
    "response_answer",
    "run_dpo",
    "run_grpo",
    "train_dpo",
]
