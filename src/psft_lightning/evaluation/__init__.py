"""Evaluation beyond the loss: generated-answer accuracy, entropy probe and out-of-domain retention."""

from psft_lightning.evaluation.answers import accuracy, extract_answer, is_correct
from psft_lightning.evaluation.constraints import CHECKS, follows
from psft_lightning.evaluation.generation import generate, render_prompts
from psft_lightning.evaluation.isolation import isolated
from psft_lightning.evaluation.ood import IFItem, MCItem, drift_nll, if_strict, mc_scores
from psft_lightning.evaluation.probes import ProbeResult, teacher_forced
from psft_lightning.evaluation.suite import GROUPS, EvalConfig, EvalSuite

__all__ = [
    "CHECKS",
    "GROUPS",
    "EvalConfig",
    "EvalSuite",
    "IFItem",
    "MCItem",
    "ProbeResult",
    "accuracy",
    "drift_nll",
    "extract_answer",
    "follows",
    "generate",
    "if_strict",
    "is_correct",
    "isolated",
    "mc_scores",
    "render_prompts",
    "teacher_forced",
]
