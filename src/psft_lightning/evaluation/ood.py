"""Out-of-domain retention: multiple-choice knowledge (lm-eval ARC scoring), drift from the base
model's own answers (mean NLL), and instruction following with checkable constraints (strict)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from psft_lightning.data.formats import IGNORE_INDEX, Example
from psft_lightning.data.sources import read_rows
from psft_lightning.errors import DataError
from psft_lightning.evaluation.constraints import follows, validate_checks
from psft_lightning.evaluation.generation import generate, render_prompts
from psft_lightning.evaluation.probes import sequence_logprobs, teacher_forced
from psft_lightning.evaluation.subject import ScoreFn


@dataclass
class MCItem:
    question: str
    choices: list[str]
    answer: int


@dataclass
class IFItem:
    prompt: str
    checks: list[dict[str, Any]]


def _field(row: dict, name: str, kind: type, where: str) -> Any:
    if not isinstance(row.get(name), kind):
        raise DataError(f"{where}: field {name!r} must be a {kind.__name__}, got {row.get(name)!r:.80}")
    return row[name]


def load_mc(path: str, limit: int = 0) -> list[MCItem]:
    """Rows ``{"question": str, "choices": [str, ...], "answer": index}``; ``limit`` keeps the first N."""
    items = []
    for row, where in read_rows(path):
        choices = _field(row, "choices", list, where)
        answer = _field(row, "answer", int, where)
        if len(choices) < 2 or not 0 <= answer < len(choices):
            raise DataError(f"{where}: needs >= 2 choices and 0 <= answer < {len(choices)}, got {answer}")
        items.append(MCItem(_field(row, "question", str, where), [str(c) for c in choices], answer))
    return items[:limit] if limit else items


def load_prompts(path: str, limit: int = 0) -> list[str]:
    """Rows ``{"prompt": str}`` (the drift instructions)."""
    prompts = [_field(row, "prompt", str, where) for row, where in read_rows(path)]
    return prompts[:limit] if limit else prompts


def load_if(path: str, limit: int = 0) -> list[IFItem]:
    """Rows ``{"prompt": str, "checks": [{"kind": ..., "value": ...}, ...]}``."""
    items = [
        IFItem(_field(row, "prompt", str, where), validate_checks(row.get("checks"), where))
        for row, where in read_rows(path)
    ]
    return items[:limit] if limit else items


# ------------------------------------------------------------------------------- multiple choice
def mc_context(question: str) -> str:
    """lm-eval's ARC prompt; each choice follows after a space (its ``target_delimiter``)."""
    return f"Question: {question}\nAnswer:"


def mc_example(tokenizer, context: str, continuation: str) -> Example:
    """Context and continuation tokens as lm-eval splits them: encode both together, cut at the context."""
    context_ids = list(tokenizer(context, add_special_tokens=True)["input_ids"])
    whole = list(tokenizer(context + continuation, add_special_tokens=True)["input_ids"])
    if whole[: len(context_ids)] != context_ids or len(whole) == len(context_ids):
        whole = context_ids + list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    return Example(whole, [IGNORE_INDEX] * len(context_ids) + whole[len(context_ids) :])


def mc_items(
    score: ScoreFn, model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 32
) -> list[tuple[bool, bool]]:
    """Per item, whether ``acc`` (argmax of summed log-likelihood) and ``acc_norm`` (divided by the
    choice's characters) pick the answer: the study's frontier resamples items."""
    examples = [mc_example(tokenizer, mc_context(it.question), " " + c) for it in items for c in it.choices]
    loglik = [lp.sum().item() for lp in sequence_logprobs(score, model, examples, batch_size)]
    right = []
    at = 0
    for item in items:
        scores = loglik[at : at + len(item.choices)]
        at += len(item.choices)
        normed = [s / len(c) for s, c in zip(scores, item.choices, strict=True)]
        right.append(
            (
                max(range(len(scores)), key=scores.__getitem__) == item.answer,
                max(range(len(normed)), key=normed.__getitem__) == item.answer,
            )
        )
    return right


def mc_scores(score: ScoreFn, model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 32) -> dict:
    """``acc`` and ``acc_norm`` over ``items`` (see ``mc_items``)."""
    right = mc_items(score, model, tokenizer, items, batch_size)
    return {"acc": sum(a for a, _ in right) / len(items), "acc_norm": sum(n for _, n in right) / len(items)}


# ----------------------------------------------------------------------------------------- drift
def make_references(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, batch_size=16):
    """The base model's own greedy answers: rows for a drift reference file."""
    texts = generate(model, tokenizer, render_prompts(tokenizer, prompts), max_new_tokens, batch_size)
    return [{"prompt": p, "reference": t[0]} for p, t in zip(prompts, texts, strict=True)]


def load_references(path: str) -> list[dict[str, str]]:
    rows = []
    for row, where in read_rows(path):
        rows.append(
            {"prompt": _field(row, "prompt", str, where), "reference": _field(row, "reference", str, where)}
        )
    return rows


def write_references(path: str, rows: list[dict[str, str]]) -> None:
    """Write the base answers whole or not at all (a study killed while writing reads none)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def drift_examples(tokenizer, references: list[dict[str, str]]) -> list[Example]:
    """Prompt tokens as generation saw them, then the base answer and end-of-sequence as loss tokens.

    Built from the rendered prompt rather than ``row_to_example`` so that a blank base answer (the
    base model stopped at once) still counts: its only target is the end-of-sequence token.
    """
    examples = []
    for prompt_ids, ref in zip(
        render_prompts(tokenizer, [r["prompt"] for r in references]), references, strict=True
    ):
        answer = list(tokenizer(ref["reference"], add_special_tokens=False)["input_ids"]) + [
            tokenizer.eos_token_id
        ]
        examples.append(Example(prompt_ids + answer, [IGNORE_INDEX] * len(prompt_ids) + answer))
    return examples


def drift_nll(score: ScoreFn, model: nn.Module, examples: list[Example], batch_size: int = 16) -> float:
    """Mean per-token NLL of the base model's answers under ``model`` (0 drift = the base model's own NLL)."""
    return teacher_forced(score, model, examples, batch_size).nll


def drift_items(
    score: ScoreFn, model: nn.Module, examples: list[Example], batch_size: int = 16
) -> list[tuple[float, int]]:
    """Per base answer, its summed NLL under ``model`` and its token count: ``drift_nll`` is the sum of
    the first over the sum of the second, and a resample of answers keeps that token weighting."""
    return [(-lp.sum().item(), lp.numel()) for lp in sequence_logprobs(score, model, examples, batch_size)]


# ------------------------------------------------------------------------- instruction following
def if_strict(texts: list[str], items: list[IFItem]) -> float:
    """Prompt-level strict accuracy: the fraction of responses that meet every constraint."""
    return sum(if_items(texts, items)) / len(items)


def if_items(texts: list[str], items: list[IFItem]) -> list[bool]:
    """Per prompt, whether its response meets every constraint."""
    return [follows(t, it.checks) for t, it in zip(texts, items, strict=True)]
