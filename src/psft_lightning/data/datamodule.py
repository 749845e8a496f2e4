"""PSFTDataModule: JSON/JSONL/Parquet files, saved or hub datasets -> cached Arrow examples -> batches."""

from __future__ import annotations

import logging
import os
import random

import lightning as L
from torch.utils.data import DataLoader

from psft_lightning.data.batching import (
    StepBatches,
    StepShape,
    check_step_fits,
    check_val_interval,
    data_parallel,
)
from psft_lightning.data.cache import cached_examples, default_cache_dir
from psft_lightning.data.collate import Packing, check_packing, collate
from psft_lightning.data.formats import IGNORE_INDEX, Fields, Format, check_format
from psft_lightning.data.hub import is_hub, parse_hub
from psft_lightning.data.lengths import Overlong, OverlongReport, SkipReport, length_warnings
from psft_lightning.data.order import ORDER_KEY, check_same_order, order_record
from psft_lightning.data.table import ExampleTable
from psft_lightning.data.tokenise import TokenSettings
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.models import load_tokenizer

log = logging.getLogger(__name__)


class PSFTDataModule(L.LightningDataModule):
    """Tokenised SFT data with exact per-step loss-token counts.

    Rows are tokenised once per source into the Arrow cache (``cache_dir``) and memory-mapped from
    there: a later run, and every other rank of this one, reads the cached examples without
    re-tokenising (``prepare_data`` builds them on each node's first process).

    Args:
        train_files: JSONL/JSON/Parquet files, saved-dataset directories or hub datasets
            (``hub:org/name``, optionally ``?name=CONFIG&split=SPLIT&revision=REV``) for training.
        val_files: files for validation; if empty, ``val_fraction`` of the training rows is held out.
        tokenizer: model name or path the tokenizer is loaded from (the CLI links it to ``model.model``).
        format: ``auto`` detects per row from the present fields.
        fields: column names (e.g. ``{prompt: question, completion: answer}``).
        use_chat_template: wrap prompt/completion rows in the tokenizer's chat template when it has one.
        max_length: tokens per example; see ``overlong``.
        overlong: ``truncate`` cuts the response, no EOS put back (an example whose prompt alone fills
            max_length is skipped), ``skip`` drops any longer example, ``error`` stops with its
            location. Cuts and skips are counted and logged (``overlong_report``, ``skipped``).
        batch_size: micro-batch size per device. The optimizer step holds
            ``batch_size x accumulate_grad_batches x devices`` examples.
        val_batch_size: validation batch size (defaults to ``batch_size``).
        max_val_examples: cap on validation examples (first N after the seeded split), 0 for all.
        seed: shuffling and split seed.
        packing: ``true`` lays each micro-batch's examples end to end in rows of <= ``pack_length``
            tokens (position ids restart per example, no padding between them), for eager, sdpa and
            flex_attention; ``padding_free`` lays them all in one row with no padding at all (TRL's
            ``padding_free``), the layout flash_attention_2/3 read too (their varlen kernels find the
            examples from position ids only in a one-row batch).
        pack_length: tokens per packed row of ``packing: true`` (defaults to ``max_length``).
        bucketing: put examples of similar length in the same micro-batch (less padding, no packing).
        cache_dir: where tokenised examples are kept (default ``$PSFT_DATA_CACHE``, else
            ``~/.cache/psft_lightning/data``); deleting it is always safe.
        num_proc: tokenising processes (default: one per CPU, at most one per 500 rows).
        allow_inexact_resume: resume from a checkpoint whose data order differs from this run's
            (other training files or contents, batch size, accumulation, devices, seed, packing...)
            with a warning; by default that resume is refused, since the data position would not be
            exact (``data.order``).
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
        packing: Packing = False,
        pack_length: int | None = None,
        bucketing: bool = False,
        cache_dir: str | None = None,
        num_proc: int | None = None,
        allow_inexact_resume: bool = False,
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
        check_format(format)
        if overlong not in ("truncate", "skip", "error"):
            raise ConfigError(f"data.overlong must be truncate, skip or error, got {overlong!r}")
        if max_val_examples < 0:
            raise ConfigError(f"data.max_val_examples must be >= 0 (0 for all), got {max_val_examples}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if num_proc is not None and num_proc < 1:
            raise ConfigError(f"data.num_proc must be >= 1 (or null for one per CPU), got {num_proc}")
        check_packing(packing, pack_length, max_length)
        self.train_files = list(train_files)
        self.val_files = list(val_files or [])
        self.tokenizer_name = tokenizer
        self.format = format
        self.fields = Fields.of(fields)
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
        self.cache_dir = cache_dir or default_cache_dir()
        self.num_proc = num_proc
        self.allow_inexact_resume = allow_inexact_resume
        for path in self.train_files + self.val_files:  # a malformed hub entry fails before any work
            if is_hub(path):
                parse_hub(path, "train")
        self.train_examples: ExampleTable | None = None
        self.val_examples: ExampleTable | list = []
        self.skipped: dict[str, SkipReport] = {}
        self.overlong_report: dict[str, OverlongReport] = {}
        self.tokenised: list[str] = []  # cache entries this process built (none when it mapped them)
        self.train_keys: list[list[str]] = []  # [path, cache key] per training file, for the order record

    @property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_name)

    @property
    def token_settings(self) -> TokenSettings:
        return TokenSettings(self.format, self.fields, self.use_chat_template, self.max_length, self.overlong)

    def _splits(self) -> list[tuple[list[str], str]]:
        return [(self.train_files, "train")] + ([(self.val_files, "validation")] if self.val_files else [])

    def prepare_data(self) -> None:
        """Tokenise every source not in the cache yet; Lightning calls this on one process per node
        and lets the others wait, so a multi-process run tokenises once."""
        tokenizer = self.tokenizer
        for files, split in self._splits():
            for path in files:
                self._entry(path, split, tokenizer)

    def _entry(self, path: str, split: str, tokenizer):
        entry = cached_examples(path, split, tokenizer, self.token_settings, self.cache_dir, self.num_proc)
        if entry.built:
            self.tokenised.append(entry.directory)
        return entry

    def load_examples(self, files: list[str], split: str) -> ExampleTable:
        """The tokenised rows of ``files`` from the cache (tokenised now if missing); over-long rows
        follow ``overlong`` and are counted."""
        skips, overlong, tables, keys = SkipReport(), OverlongReport(), [], []
        tokenizer = self.tokenizer
        for path in files:
            entry = self._entry(path, split, tokenizer)
            keys.append([path, os.path.basename(entry.directory)])
            if not entry.built and self._speaks:
                log.info("%s data: %s: using the tokenised cache %s", split, path, entry.directory)
            skips.merge(entry.skips)
            overlong.merge(entry.overlong)
            tables.append(entry.table)
        examples = ExampleTable.concat(tables)
        if split == "train":
            self.train_keys = keys
        self.skipped[split], self.overlong_report[split] = skips, overlong
        for line in length_warnings(split, len(examples), skips, overlong, self.max_length):
            if self._speaks:
                log.warning(line)
        if not len(examples):  # files without rows are refused by read_rows: every row was too long
            raise DataError(
                f"{split} data ({', '.join(files)}) has no usable example after "
                f"max_length={self.max_length}: all {skips.total} rows are longer (the longest has "
                f"{overlong.longest} tokens)"
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
            self.val_examples = examples.select(sorted(held))
            examples = examples.select([i for i in range(len(examples)) if i not in held])
        if self.max_val_examples:
            self.val_examples = self.val_examples[: self.max_val_examples]
        self.train_examples = examples
        trainer = self.trainer
        if stage == "fit" and trainer is not None:  # before any model work, not after validation
            shape = self._shape()
            check_step_fits(len(examples), shape, f"train data ({', '.join(self.train_files)}): ")
            check_val_interval(
                len(examples), shape, trainer.val_check_interval, trainer.check_val_every_n_epoch
            )
        if self._speaks:
            log.info(
                "train: %d examples, %d tokens (%d loss tokens); validation: %d examples",
                len(examples),
                int(examples.lengths.sum(dtype="int64")),
                int(examples.loss_tokens.sum(dtype="int64")),
                len(self.val_examples),
            )

    def order_record(self) -> dict:
        """What decides the training data order (``data.order``), in plain types for the checkpoint."""
        held_out = None if self.val_files else self.val_fraction
        return order_record(self.train_keys, self._shape(), self.seed, self.shuffle, held_out, self.layout)

    @property
    def layout(self) -> dict:
        """How examples are laid out in micro-batches (part of the data order)."""
        return {
            "max_length": self.max_length,
            "packing": self.packing,
            "pack_length": self.pack_length,
            "bucketing": self.bucketing,
        }

    def state_dict(self) -> dict:
        return {ORDER_KEY: self.order_record()} if self.train_keys else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """On resume, refuse (or warn about) another data order; checkpoints without a record resume."""
        trainer = self.trainer
        if ORDER_KEY in state_dict and trainer is not None and trainer.state.fn == "fit":
            if self._speaks or not self.allow_inexact_resume:
                check_same_order(state_dict[ORDER_KEY], self.order_record(), self.allow_inexact_resume)

    @property
    def _speaks(self) -> bool:
        """Log lines come from the first process only (every rank loads the same data)."""
        return self.trainer is None or self.trainer.is_global_zero

    def _shape(self) -> StepShape:
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        return StepShape(self.batch_size, accumulate, data_parallel(trainer)[1])

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
            rank=data_parallel(trainer)[0],
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


__all__ = ["IGNORE_INDEX", "OverlongReport", "PSFTDataModule", "SkipReport"]
