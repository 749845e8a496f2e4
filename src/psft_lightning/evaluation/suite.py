"""The evaluation suite: which sets, how large, and one ``run`` that returns every requested metric."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from psft_lightning.data.formats import Fields, row_to_example
from psft_lightning.data.sources import read_rows
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.evaluation import ood
from psft_lightning.evaluation.answers import ANSWER_PATTERN, accuracy, last_answer, reference_answer
from psft_lightning.evaluation.generation import generate, render_prompts
from psft_lightning.evaluation.isolation import isolated
from psft_lightning.evaluation.probes import teacher_forced
from psft_lightning.evaluation.subject import Subject

log = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = ("accuracy", "avg_k", "entropy", "mc", "drift", "if")


@dataclass
class EvalConfig:
    """Sizes and files of the evaluation sets (paths relative to the working directory).

    Args:
        eval_file: in-domain rows with a prompt and a reference answer (the completion); accuracy also
            needs each row's final answer: its ``final_field``, else the last ``answer_pattern`` match
            in its completion (``evaluation.answers.reference_answer``).
        num_eval: first N rows used for greedy accuracy (0: all).
        k: samples per question for avg@k, at ``temperature``; ``num_sampled`` questions (0: num_eval).
        max_new_tokens: generation budget of in-domain answers.
        num_probe: first N rows whose reference answers are the entropy probe (0: all).
        ood_dir: folder with general_knowledge.jsonl, instructions.jsonl, if_probe.jsonl and
            drift_reference.<model>.jsonl (the bundled base answers).
        num_mc, num_drift, num_if: first N items of each OOD set (0: all).
        seed: seed of the sampled metrics (training RNG is saved and restored around every eval).
    """

    eval_file: str = "data/arithmetic/val.jsonl"
    prompt_field: str = "question"
    completion_field: str = "answer"
    final_field: str = "final"
    answer_pattern: str = ANSWER_PATTERN.pattern
    num_eval: int = 32
    k: int = 8
    num_sampled: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 96
    batch_size: int = 16
    num_probe: int = 32
    ood_dir: str = "data/ood"
    num_mc: int = 0
    num_drift: int = 0
    num_if: int = 0
    drift_max_new_tokens: int = 128
    if_max_new_tokens: int = 128
    use_chat_template: bool = True
    seed: int = 1234


def check_groups(groups: list[str], where: str) -> list[str]:
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ConfigError(f"{where}: unknown evaluation set(s) {unknown}; choose from {', '.join(GROUPS)}")
    return list(groups)


def reference_file(ood_dir: str, model_name: str) -> str:
    """Where the bundled base-model answers for ``model_name`` live (a file name made safe)."""
    return os.path.join(ood_dir, f"drift_reference.{re.sub(r'[^A-Za-z0-9._-]+', '_', model_name)}.jsonl")


class EvalSuite:
    """Loads each set once (lazily) and computes the metrics of the requested groups."""

    def __init__(self, config: EvalConfig | None = None) -> None:
        self.config = config or EvalConfig()
        if self.config.k < 1 or self.config.max_new_tokens < 1:
            raise ConfigError("evaluation k and max_new_tokens must be >= 1")
        self._rows: list[dict] | None = None
        self._where: list[str] = []
        self._cache: dict[str, object] = {}
        self.seconds: dict[str, float] = {}  # wall time spent on each group, over every ``run``
        self.items: dict[str, list] = {}  # the last ``run``'s per-item values of mc, drift and if

    # ---------------------------------------------------------------------------------- data
    def rows(self) -> list[dict]:
        """In-domain rows with their prompt and reference answer checked (final answers: ``finals``)."""
        if self._rows is None:
            c = self.config
            rows = []
            for row, where in read_rows(c.eval_file):
                for name in (c.prompt_field, c.completion_field):
                    if not isinstance(row, dict) or not isinstance(row.get(name), str):
                        raise DataError(f"{where}: evaluation needs a string field {name!r}")
                rows.append(row)
                self._where.append(where)
            self._rows = rows
        return self._rows

    def finals(self, n: int) -> list[str]:
        """The final answers of the first ``n`` rows (0: all), which accuracy compares answers with."""
        c = self.config
        pattern = self.pattern()
        finals = []
        for row, where in zip(self._first(n), self._where, strict=False):
            final = reference_answer(row, c.final_field, c.completion_field, pattern)
            if final is None:
                raise DataError(
                    f"{where}: accuracy needs a final answer: a field {c.final_field!r}, or a "
                    f"{c.completion_field!r} that the answer pattern {c.answer_pattern!r} matches"
                )
            finals.append(final)
        return finals

    def pattern(self) -> re.Pattern:
        try:
            return re.compile(self.config.answer_pattern)
        except re.error as err:
            raise ConfigError(f"evaluation answer_pattern {self.config.answer_pattern!r}: {err}") from None

    def _first(self, n: int) -> list[dict]:
        return self.rows()[:n] if n else self.rows()

    def _ood(self, name: str, loader, n: int):
        if name not in self._cache:
            self._cache[name] = loader(os.path.join(self.config.ood_dir, name), n)
        return self._cache[name]

    def drift_examples(self, subject: Subject, cache_path: str | None):
        """Base-model answers: bundled for the model, else cached, else generated once now."""
        if "drift" in self._cache:
            return self._cache["drift"]
        c = self.config
        prompts = self._ood("instructions.jsonl", ood.load_prompts, c.num_drift)
        refs = None
        tokenizer = subject.tokenizer
        for path in (reference_file(c.ood_dir, subject.model_name), cache_path):
            if path and os.path.isfile(path):
                rows = ood.load_references(path)
                if [r["prompt"] for r in rows[: len(prompts)]] == prompts:
                    refs = rows[: len(prompts)]
                    break
                log.warning("ignoring %s: its prompts differ from %s", path, c.ood_dir)
        if refs is None:
            base = subject.load_base()
            with isolated(base, c.seed):
                refs = ood.make_references(base, tokenizer, prompts, c.drift_max_new_tokens, c.batch_size)
            if cache_path:
                ood.write_references(cache_path, refs)
                log.info("drift references of the base model written to %s", cache_path)
        self._cache["drift"] = ood.drift_examples(tokenizer, refs)
        return self._cache["drift"]

    # ------------------------------------------------------------------------------- metrics
    def run(self, subject: Subject, groups: list[str], drift_cache: str | None = None) -> dict[str, float]:
        """Every metric of ``groups`` for ``subject.policy``; training state is left as it was."""
        c = self.config
        tokenizer, policy, score = subject.tokenizer, subject.policy, subject.score
        metrics: dict[str, float] = {}
        self.items = {}
        clock = self._clock
        drift = None
        if "drift" in groups:  # may generate with the base model: before the policy is put in eval mode
            with clock("drift"):
                drift = self.drift_examples(subject, drift_cache)
        with isolated(policy, c.seed):
            if "accuracy" in groups:
                with clock("accuracy"):
                    rows = self._first(c.num_eval)
                    texts = self._answers(policy, tokenizer, rows, 1, 0.0)
                    pattern = self.pattern()
                    finals = self.finals(c.num_eval)
                    metrics["eval/accuracy"] = accuracy([t[0] for t in texts], finals, pattern)
                    answered = sum(last_answer(t[0], pattern) is not None for t in texts)
                    metrics["eval/answer_rate"] = answered / len(rows)
            if "avg_k" in groups:
                with clock("avg_k"):
                    rows = self._first(c.num_sampled or c.num_eval)
                    texts = self._answers(policy, tokenizer, rows, c.k, c.temperature)
                    flat = [t for sample in texts for t in sample]
                    finals = [f for f in self.finals(c.num_sampled or c.num_eval) for _ in range(c.k)]
                    metrics[f"eval/avg@{c.k}"] = accuracy(flat, finals, self.pattern())
            if "entropy" in groups:
                with clock("entropy"):
                    probe = self._probe(tokenizer)
                    metrics["eval/entropy"] = teacher_forced(score, policy, probe, c.batch_size).entropy
            if "mc" in groups:
                with clock("mc"):
                    items = self._ood("general_knowledge.jsonl", ood.load_mc, c.num_mc)
                    right = ood.mc_items(score, policy, tokenizer, items, 2 * c.batch_size)
                    metrics["ood/mc_acc"] = sum(a for a, _ in right) / len(right)
                    metrics["ood/mc_acc_norm"] = sum(n for _, n in right) / len(right)
                    self.items["ood/mc_acc"] = [float(a) for a, _ in right]
            if drift is not None:
                with clock("drift"):
                    per_answer = ood.drift_items(score, policy, drift, c.batch_size)
                    metrics["ood/drift_nll"] = sum(n for n, _ in per_answer) / sum(t for _, t in per_answer)
                    self.items["ood/drift_nll"] = [list(pair) for pair in per_answer]
            if "if" in groups:
                with clock("if"):
                    items = self._ood("if_probe.jsonl", ood.load_if, c.num_if)
                    prompts = render_prompts(tokenizer, [it.prompt for it in items], c.use_chat_template)
                    texts = generate(policy, tokenizer, prompts, c.if_max_new_tokens, c.batch_size)
                    followed = ood.if_items([t[0] for t in texts], items)
                    metrics["ood/if_strict"] = sum(followed) / len(items)
                    self.items["ood/if_strict"] = [float(f) for f in followed]
        return metrics

    @contextmanager
    def _clock(self, group: str) -> Iterator[None]:
        """Add the block's wall time to ``seconds[group]`` (the study's train/eval split)."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[group] = self.seconds.get(group, 0.0) + time.perf_counter() - begin

    def _answers(self, policy, tokenizer, rows, samples: int, temperature: float) -> list[list[str]]:
        c = self.config
        prompts = render_prompts(tokenizer, [r[c.prompt_field] for r in rows], c.use_chat_template)
        return generate(policy, tokenizer, prompts, c.max_new_tokens, c.batch_size, samples, temperature)

    def _probe(self, tokenizer):
        if "probe" not in self._cache:
            c = self.config
            fields = Fields(prompt=c.prompt_field, completion=c.completion_field)
            self._cache["probe"] = [
                row_to_example(
                    r, tokenizer, "prompt_completion", fields, c.use_chat_template, f"probe row {i}"
                )
                for i, r in enumerate(self._first(c.num_probe))
            ]
        return self._cache["probe"]
