"""PSFTDataModule: local JSON/JSONL/Parquet files or a saved HF dataset -> tokenised, batched examples."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Literal

import lightning as L
from torch.utils.data import DataLoader

from psft_lightning.data.batching import StepBatches, StepShape, check_step_fits, check_val_interval
from psft_lightning.data.collate import collate
from psft_lightning.data.formats import IGNORE_INDEX, Example, Fields, Format, row_to_example
from psft_lightning.data.sources import read_rows
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.models import load_tokenizer

log = logging.getLogger(__name__)

Overlong = Literal["truncate", "skip", "error"]


@dataclass
class SkipReport:
    """What was left out of a split and why, with the first few locations of each reason."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def fit_length(
    example: Example, max_length: int, overlong: Overlong, where: str
) -> tuple[Example | None, str]:
    """Apply ``max_length``: keep, cut the response, or drop the example (returning the reason)."""
    if len(example.input_ids) <= max_length:
        return example, ""
    if overlong == "error":
        raise DataError(
            f"{where}: {len(example.input_ids)} tokens exceed max_length={max_length} "
            f"(data.overlong=error; use truncate or skip to keep going)"
        )
    if overlong == "skip":
        return None, "longer than max_length"
    cut = Example(example.input_ids[:max_length], example.labels[:max_length])
    if cut.num_loss_tokens == 0:
        return None, "prompt alone fills max_length"
    return cut, ""


class PSFTDataModule(L.LightningDataModule):
    """Tokenised SFT data with exact per-step loss-token counts.

    Args:
        train_files: JSONL/JSON/Parquet files or saved-dataset directories for training.
        val_files: files for validation; if empty, ``val_fraction`` of the training rows is held out.
        tokenizer: model name or path the tokenizer is loaded from (the CLI links it to ``model.model``).
        format: ``auto`` detects per row from the present fields.
        fields: column names (e.g. ``{prompt: question, completion: answer}``).
        use_chat_template: wrap prompt/completion rows in the tokenizer's chat template when it has one.
        max_length: tokens per example; see ``overlong``.
        overlong: ``truncate`` cuts the response (an example whose prompt alone fills max_length is
            skipped and counted), ``skip`` drops any longer example, ``error`` stops with its location.
        batch_size: micro-batch size per device. The optimizer step holds
            ``batch_size x accumulate_grad_batches x devices`` examples.
        val_batch_size: validation batch size (defaults to ``batch_size``).
        max_val_examples: cap on validation examples (first N after the seeded split), 0 for all.
        seed: shuffling and split seed.
        packing: lay each micro-batch's examples end to end in rows of <= ``pack_length`` tokens
            (position ids restart per example, no padding between them); needs an attention
            implementation that keeps packed examples apart (eager, sdpa, flex_attention).
        pack_length: tokens per packed row (defaults to ``max_length``).
        bucketing: put examples of similar length in the same micro-batch (less padding, no packing).
    """

    def __init__(
        self,
        train_files: list[str] | str,
        val_files: list[str] | str | None = None,
        tokenizer: str = "smollm2-135m-instruct",
        format: Format = "auto",
        fields: Fields | None = None,
        use_chat_template: bool = True,
        max_length: int = 512,
        overlong: Overlong = "truncate",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_fraction: float = 0.05,
        max_val_examples: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        packing: bool = False,
        pack_length: int | None = None,
        bucketing: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(train_files, str):
            train_files = [train_files]
        if isinstance(val_files, str):
            val_files = [val_files]
        if not train_files:
            raise ConfigError("data.train_files is empty: give at least one training file")
        if max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2, got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if overlong not in ("truncate", "skip", "error"):
            raise ConfigError(f"data.overlong must be truncate, skip or error, got {overlong!r}")
        if max_val_examples < 0:
            raise ConfigError(f"data.max_val_examples must be >= 0 (0 for all), got {max_val_examples}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if pack_length is not None and pack_length < max_length:
            raise ConfigError(
                f"data.pack_length ({pack_length}) must be >= data.max_length ({max_length}) so every "
                "example fits in a packed row"
            )
        self.train_files = list(train_files)
        self.val_files = list(val_files or [])
        self.tokenizer_name = tokenizer
        self.format = format
        if isinstance(fields, dict):  # Python callers may pass the YAML form
            unknown = sorted(set(fields) - set(Fields.__dataclass_fields__))
            if unknown:
                raise ConfigError(
                    f"data.fields has unknown keys {unknown}; known: {list(Fields.__dataclass_fields__)}"
                )
            fields = Fields(**fields)
        self.fields = fields or Fields()
        self.use_chat_template = use_chat_template
        self.max_length = max_length
        self.overlong = overlong
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_fraction = val_fraction
        self.max_val_examples = max_val_examples
        self.shuffle = shuffle
        self.seed = seed
        self.packing = packing
        self.pack_length = pack_length or max_length
        self.bucketing = bucketing
        self.train_examples: list[Example] | None = None
        self.val_examples: list[Example] = []
        self.skipped: dict[str, SkipReport] = {}

    @property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_name)

    def load_examples(self, files: list[str], split: str) -> list[Example]:
        """Read and tokenise every row of ``files``; over-long rows follow ``overlong`` and are counted."""
        examples: list[Example] = []
        report = SkipReport()
        for path in files:
            for row, where in read_rows(path, split):
                example = row_to_example(
                    row, self.tokenizer, self.format, self.fields, self.use_chat_template, where
                )
                example, reason = fit_length(example, self.max_length, self.overlong, where)
                if example is None:
                    report.add(reason, where)
                else:
                    examples.append(example)
        self.skipped[split] = report
        if report.total:
            details = "; ".join(
                f"{n} {reason} (e.g. {', '.join(report.examples[reason])})"
                for reason, n in report.counts.items()
            )
            log.warning(
                "%s data: skipped %d of %d rows: %s",
                split,
                report.total,
                report.total + len(examples),
                details,
            )
        if not examples:
            raise DataError(
                f"{split} data ({', '.join(files)}) has no usable example after max_length={self.max_length}"
            )
        return examples

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        examples = self.load_examples(self.train_files, "train")
        if self.val_files:
            self.val_examples = self.load_examples(self.val_files, "validation")
        elif self.val_fraction > 0:
            order = list(range(len(examples)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, int(len(examples) * self.val_fraction))
            held = set(order[:n_val])
            self.val_examples = [examples[i] for i in sorted(held)]
            examples = [e for i, e in enumerate(examples) if i not in held]
        if self.max_val_examples:
            self.val_examples = self.val_examples[: self.max_val_examples]
        self.train_examples = examples
        trainer = self.trainer
        if stage == "fit" and trainer is not None:  # before any model work, not after validation
            shape = self._shape()
            check_step_fits(len(examples), shape)
            check_val_interval(
                len(examples), shape, trainer.val_check_interval, trainer.check_val_every_n_epoch
            )
        n_tokens = sum(len(e.input_ids) for e in examples)
        log.info(
            "train: %d examples, %d tokens (%d loss tokens); validation: %d examples",
            len(examples),
            n_tokens,
            sum(e.num_loss_tokens for e in examples),
            len(self.val_examples),
        )

    def _shape(self) -> StepShape:
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        world = trainer.world_size if trainer else 1
        return StepShape(self.batch_size, accumulate, world)

    def train_dataloader(self) -> StepBatches:
        if self.train_examples is None:  # called directly, not by a trainer that ran setup()
            self.setup("fit")
        trainer = self.trainer
        return StepBatches(
            self.train_examples,
            self._shape(),
            pad_id=self.tokenizer.pad_token_id,
            seed=self.seed,
            shuffle=self.shuffle,
            rank=trainer.global_rank if trainer else 0,
            current_step=(lambda: trainer.global_step) if trainer else (lambda: 0),
            packing=self.packing,
            pack_length=self.pack_length,
            bucketing=self.bucketing,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.train_examples is None:
            self.setup("validate")
        if not self.val_examples:
            return []
        return DataLoader(
            self.val_examples,
            batch_size=self.val_batch_size,
            shuffle=False,
            collate_fn=lambda batch: collate(batch, self.tokenizer.pad_token_id),
        )


__all__ = ["IGNORE_INDEX", "PSFTDataModule", "SkipReport"]
