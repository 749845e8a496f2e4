"""``psft grpo`` and ``psft dpo`` (``--model DIR --train-file F --out DIR [...]``): one flag per field
of the settings dataclass, with its default."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from psft_lightning.commands import command_parser
from psft_lightning.rl.settings import DPOSettings, GRPOSettings, TaskSettings

HELP = {
    "steps": "optimizer steps",
    "lr": "learning rate (constant)",
    "max_new_tokens": "longest completion",
    "temperature": "sampling temperature",
    "seed": "seed of sampling, data order and initialisation",
    "prompt_field": "the column holding the prompt",
    "answer_field": "the column holding the gold answer (a number, or a solution the pattern reads)",
    "completion_field": "a row without the answer field: the worked solution the pattern reads it from",
    "answer_pattern": "regex with one group: the final answer in a response (and in a solution)",
    "use_chat_template": "render prompts as a user turn of the tokenizer's chat template",
    "bf16": "bf16 mixed precision",
}
GRPO_HELP = {
    **HELP,
    "batch_size": "prompts per optimizer step",
    "beta": "weight of the KL to the initial model (0: no reference model is kept)",
    "num_generations": "samples per prompt (>= 2: the advantage is relative to the prompt's other samples)",
    "prompts": "train on the first rows only, several passes over them (0: every row)",
}
DPO_HELP = {
    **HELP,
    "batch_size": "preference pairs per optimizer step",
    "beta": "DPO's beta (the strength of the pull to the reference)",
    "samples": "samples per prompt from which the pairs are built",
    "prompts": "how many rows (the first ones) to sample",
}


def parser(prog: str, description: str, settings: type[TaskSettings], help: dict[str, str]):
    out = command_parser(prog, description)
    out.add_argument("--model", required=True, type=Path, help="a model directory written by psft export")
    out.add_argument("--train-file", required=True, type=Path, help="JSONL of prompts with gold answers")
    out.add_argument("--out", required=True, type=Path, help="the directory to write")
    for field in dataclasses.fields(settings):
        flag = f"--{field.name.replace('_', '-')}"
        if field.type == "bool":
            toggle = argparse.BooleanOptionalAction
            out.add_argument(flag, action=toggle, default=field.default, help=help[field.name])
        else:
            kind = {"int": int, "float": float, "str": str}[field.type]
            out.add_argument(flag, type=kind, default=field.default, help=f"{help[field.name]} (%(default)s)")
    return out


def grpo_main(args: list[str]) -> list[dict]:
    from psft_lightning.rl.grpo import run_grpo

    description = (
        "GRPO (TRL's GRPOTrainer) with an exact-match reward on an exported model; writes OUT/model "
        "(a Hugging Face directory), OUT/grpo_log.jsonl (reward, entropy, length per step) and "
        "OUT/grpo_prompt_rewards.jsonl (each prompt's rewards at each pass)."
    )
    return _run("psft grpo", description, GRPOSettings, GRPO_HELP, run_grpo, args)


def dpo_main(args: list[str]) -> list[dict]:
    from psft_lightning.rl.dpo import run_dpo

    description = (
        "DPO (TRL's DPOTrainer) on preference pairs from the model's own correct and incorrect samples; "
        "writes OUT/model, OUT/dpo_pairs.jsonl and OUT/dpo_log.jsonl (loss, margin per step)."
    )
    return _run("psft dpo", description, DPOSettings, DPO_HELP, run_dpo, args)


def _run(prog: str, description: str, settings: type, help: dict, stage, args: list[str]) -> list[dict]:
    """Parse ``args`` into ``settings`` and run ``stage(model, train_file, out, settings)``."""
    ns = vars(parser(prog, description, settings, help).parse_args(args))
    model, train_file, out = ns.pop("model"), ns.pop("train_file"), ns.pop("out")
    ns.pop("config", None)
    return stage(model, train_file, out, settings(**ns))
