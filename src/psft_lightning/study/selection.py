"""Checkpoint selection as the paper does it: score every epoch's model on the dev split, keep the best,
and measure the test split once, on that model only.

``SelectCheckpoint`` keeps the best-on-dev weights in memory (no checkpoint files) and puts them back
into the policy at train end, before any callback's fit end (``GenerationEval``'s final OOD sets), so
every number of a run describes its selected checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from psft_lightning.data.sources import read_rows
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.evaluation import generate, isolated, render_prompts
from psft_lightning.evaluation.answers import last_answer, reference_answer, same_answer
from psft_lightning.export import write_model
from psft_lightning.models import load_tokenizer


def sampled(rows: list, limit: int, seed: int = 0) -> list:
    """The first ``limit`` (0: all) of ``rows`` in one fixed shuffled order: a sorted file (by question,
    by template) still gives a representative subset, and a smaller sample is the start of a larger one,
    so a peer scored on fewer test questions is paired with the first of the grid's (``verdicts.common``)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[: limit or None]]


@dataclass(frozen=True)
class Task:
    """The in-domain task: train/dev/test files, their field names and how to read a final answer.

    ``answer_pattern``'s first group (or whole match) of the last match in a generated answer is
    compared (``evaluation.answers.same_answer``: numbers by value, else normalised text) with the row's
    reference answer: its ``final_field``, or, in a row without one, the last answer the pattern finds
    in its completion (``... #### 18`` with ``#### (\\S+)``, grade-school math data).
    """

    train_file: str = "data/arithmetic_one_step/train.jsonl"  # calibrated: docs/calibration.md
    dev_file: str = "data/arithmetic_one_step/dev.jsonl"
    test_file: str = "data/arithmetic_one_step/test.jsonl"
    prompt_field: str = "question"
    completion_field: str = "answer"
    final_field: str = "final"
    answer_pattern: str = r"(-?\d+)"  # the reply's last number (lm-eval's flexible extraction)

    def compiled(self) -> re.Pattern:
        try:
            return re.compile(self.answer_pattern)
        except re.error as err:
            raise ConfigError(f"answer pattern {self.answer_pattern!r} is not a regex: {err}") from None

    def questions(self, path: str, limit: int) -> list[tuple[str, str]]:
        """(prompt, reference answer) of ``limit`` rows of ``path`` (0: all), seeded (``sampled``)."""
        return sampled([self.question(row, where) for row, where in read_rows(path)], limit)

    def question(self, row: dict, where: str) -> tuple[str, str]:
        """A row's prompt and reference answer, or a DataError naming the field it lacks."""
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        for name in (self.prompt_field, self.completion_field):
            if not isinstance(row.get(name), str):
                raise DataError(
                    f"{where}: the study needs a text field {name!r} (the "
                    f"{'prompt' if name == self.prompt_field else 'completion'}); the row has {sorted(row)}"
                )
        final = reference_answer(row, self.final_field, self.completion_field, self.compiled())
        if final is None:
            raise DataError(
                f"{where}: no final answer: the row has no field {self.final_field!r} and the answer "
                f"pattern {self.answer_pattern!r} does not match its {self.completion_field!r}; give "
                "--final-field, or an --answer-pattern its completions end with"
            )
        return row[self.prompt_field], final

    def check(self) -> None:
        """Read every row of the train, dev and test files as the study will, before any model loads."""
        self.compiled()
        for path in (self.train_file, self.dev_file, self.test_file):
            for row, where in read_rows(path):
                self.question(row, where)


def correct(text: str, final: str, pattern: re.Pattern) -> bool:
    """Whether the last answer ``pattern`` finds in ``text`` is ``final``; no match is wrong."""
    return same_answer(last_answer(text, pattern), final)


@dataclass(frozen=True)
class Scoring:
    """Sizes of the study's in-domain measurements."""

    num_dev: int = 128
    num_test: int = 256
    k: int = 4
    num_sampled: int = 0  # avg@k on the first N test questions (0: all)
    temperature: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 1234


class SelectCheckpoint(L.Callback):
    """Greedy dev accuracy after every epoch; at train end the best epoch's weights are restored and
    scored on test (greedy per question, and the share of ``k`` samples right per question); under
    ``psft validate`` the model as loaded is scored the same way. Writes everything to ``out_file``.

    Args:
        task: files, fields and answer pattern (see ``Task``).
        scoring: sizes (see ``Scoring``).
        out_file: the JSON record of this run.
        export_dir: also write the selected weights there as a Hugging Face directory (what
            ``psft export`` writes), for the RL follow-up.
    """

    def __init__(self, task: dict, scoring: dict, out_file: str, export_dir: str | None = None) -> None:
        self.task, self.scoring, self.out_file = Task(**task), Scoring(**scoring), out_file
        self.export_dir = export_dir
        self.pattern = self.task.compiled()
        self.checkpoints: list[dict] = []
        self.best: dict | None = None
        self._sets: dict[str, list[tuple[str, str]]] = {}
        self._tokenizer = None
        self.seconds = {"dev": 0.0, "test": 0.0}  # generation time per split (the study's time split)
        self.started: float | None = None  # perf_counter when fit or validate began (after model load)

    def _set(self, split: str) -> list[tuple[str, str]]:
        if split not in self._sets:
            path, limit = {
                "dev": (self.task.dev_file, self.scoring.num_dev),
                "test": (self.task.test_file, self.scoring.num_test),
            }[split]
            self._sets[split] = self.task.questions(path, limit)
        return self._sets[split]

    def score(
        self, pl_module: L.LightningModule, split: str, samples: int = 1, limit: int = 0
    ) -> list[float]:
        """Per question (the first ``limit``; 0: all), the share of ``samples`` answers that are right
        (greedy when 1)."""
        s, questions = self.scoring, self._set(split)
        questions = questions[:limit] if limit else questions
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(pl_module.settings.model)
        tokenizer = self._tokenizer
        prompts = render_prompts(tokenizer, [q for q, _ in questions])
        temperature = s.temperature if samples > 1 else 0.0
        begin = time.perf_counter()
        with isolated(pl_module.policy, s.seed):
            texts = generate(
                pl_module.policy, tokenizer, prompts, s.max_new_tokens, s.batch_size, samples, temperature
            )
        self.seconds[split] += time.perf_counter() - begin
        return [
            sum(correct(t, final, self.pattern) for t in answers) / samples
            for answers, (_, final) in zip(texts, questions, strict=True)
        ]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dev = self.score(pl_module, "dev")
        accuracy = sum(dev) / len(dev)
        point = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "dev_accuracy": accuracy}
        self.checkpoints.append(point)
        for logger in trainer.loggers:
            logger.log_metrics({"dev/accuracy": accuracy}, step=trainer.global_step)
        if self.best is None or accuracy > self.best["dev_accuracy"]:  # ties keep the earlier epoch
            weights = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}
            self.best = {**point, "weights": weights}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_end runs before every callback's on_fit_end, where GenerationEval's final sets run
        if self.best is None:
            raise ConfigError("the study selects among epoch checkpoints: train at least one epoch")
        pl_module.policy.load_state_dict(self.best.pop("weights"))
        self.write(pl_module, {k: self.best[k] for k in ("epoch", "step", "dev_accuracy")})
        if self.export_dir is not None:
            write_model(pl_module.policy, self._tokenizer, Path(self.export_dir))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            dev = self.score(pl_module, "dev")
            self.write(pl_module, {"epoch": 0, "step": 0, "dev_accuracy": sum(dev) / len(dev)})

    def write(self, pl_module: L.LightningModule, selected: dict) -> None:
        record = {
            "task": asdict(self.task),
            "scoring": asdict(self.scoring),
            "checkpoints": self.checkpoints,
            "selected": selected,
            "test_greedy": self.score(pl_module, "test"),
            "test_avg_k": self.score(pl_module, "test", self.scoring.k, self.scoring.num_sampled),
        }
        Path(self.out_file).parent.mkdir(parents=True, exist_ok=True)
        Path(self.out_file).write_text(json.dumps(record), encoding="utf-8")
