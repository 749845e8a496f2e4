"""ClippedTokens: which tokens PSFT's upper clip stops, as a TensorBoard text table every N steps.

The paper finds them concentrated on words like "wait" and "alternatively". The table lists the most
often clipped token strings of one optimizer step (all its micro-batches, this rank's), with how often
each was clipped and its mean ratio there. It reads the ratios and clip flags PSFT already computed
(the step's ``outputs["tokens"]``); on the steps in between it does nothing at all.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import lightning as L
import torch

from psft_lightning.data.batch import Batch
from psft_lightning.errors import ConfigError

TAG = "psft/clipped_tokens"


class ClippedTokens(L.Callback):
    """Log the ``top_k`` most-clipped tokens every ``log_clipped_every_n_steps`` optimizer steps.

    Args:
        log_clipped_every_n_steps: optimizer steps between tables (a table at step N, 2N, ...).
        top_k: rows of the table.
    """

    def __init__(self, log_clipped_every_n_steps: int = 8, top_k: int = 20) -> None:
        if log_clipped_every_n_steps < 1 or top_k < 1:
            raise ConfigError(
                f"ClippedTokens log_clipped_every_n_steps and top_k must be >= 1, got "
                f"{log_clipped_every_n_steps} and {top_k}"
            )
        self.every = log_clipped_every_n_steps
        self.top_k = top_k
        self.counts: Counter[int] = Counter()
        self.ratio_sums: defaultdict[int, float] = defaultdict(float)
        self.tables: dict[int, list[tuple[str, int, float]]] = {}  # optimizer steps done -> rows

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        step = trainer.global_step - (1 if last else 0)  # Lightning has counted the step after its last
        if (step + 1) % self.every != 0:
            return
        tokens = outputs.get("tokens", {}) if isinstance(outputs, dict) else {}
        if "psft/clipped_high" in tokens:
            # the step's own batch: under sequence parallelism this rank's slice, whose tokens these are
            self._add(outputs.get("batch", batch), tokens["psft/clipped_high"], tokens["psft/ratio"])
        if last:
            self._log(trainer, step + 1)

    @torch.no_grad()
    def _add(self, batch: Batch | dict, clipped: torch.Tensor, ratio: torch.Tensor) -> None:
        ids = Batch.of(batch).loss_targets  # the order of the objective's per-token tensors
        for token, r in zip(ids[clipped].tolist(), ratio[clipped].tolist(), strict=True):
            self.counts[token] += 1
            self.ratio_sums[token] += r

    def _log(self, trainer: L.Trainer, steps_done: int) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule else None
        rows = [
            (_token_string(tokenizer, token), n, self.ratio_sums[token] / n)
            for token, n in self.counts.most_common(self.top_k)
        ]
        self.tables[steps_done] = rows
        self.counts, self.ratio_sums = Counter(), defaultdict(float)
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_text"):
            experiment.add_text(TAG, markdown_table(rows), steps_done)


def _token_string(tokenizer, token: int) -> str:
    return repr(tokenizer.decode([token])) if tokenizer is not None else str(token)


def markdown_table(rows: list[tuple[str, int, float]]) -> str:
    if not rows:
        return "no token was clipped in this step"
    lines = ["| token | clipped | mean ratio |", "|---|---|---|"]
    lines += [f"| `{text}` | {n} | {ratio:.3f} |" for text, n, ratio in rows]
    return "\n".join(lines)
