"""GenerationEval: generated-answer accuracy, entropy probe and OOD retention during fit and validate.

Metrics go to every logger at the trainer's optimizer step: ``eval/accuracy``, ``eval/avg@k``,
``eval/entropy``, ``ood/mc_acc``, ``ood/mc_acc_norm``, ``ood/drift_nll``, ``ood/if_strict``.
An evaluation saves and restores every RNG stream, puts the policy back in its mode and never
touches the OldPolicy snapshot, so training with it takes exactly the same steps as without.
"""

from __future__ import annotations

import logging
import os
import time

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from psft_lightning.evaluation.subject import Subject
from psft_lightning.evaluation.suite import GROUPS, EvalConfig, EvalSuite, check_groups
from psft_lightning.models import load_model, load_tokenizer

log = logging.getLogger(__name__)


class GenerationEval(L.Callback):
    """Evaluate ``periodic`` sets every ``every_n_steps`` optimizer steps, ``every_epoch`` sets after
    each training epoch, and ``start``/``final`` sets at fit start and end (and ``final`` under
    ``psft validate``).

    Args:
        every_n_steps: 0 disables periodic evaluation.
        periodic: sets evaluated every N steps: ``accuracy``, ``avg_k``, ``entropy``, ``mc``, ``drift``,
            ``if``.
        start: sets evaluated before the first step (the base model's point of every curve).
        final: sets evaluated after the last step and by ``psft validate``.
        every_epoch: sets evaluated at the end of every training epoch (the study's frontier points).
        config: sizes and files of the sets (see ``EvalConfig``).
        drift_cache: where base-model answers are cached for models without bundled ones
            (default ``<default_root_dir>/drift_reference.jsonl``).
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        periodic: list[str] | None = None,
        start: list[str] | None = None,
        final: list[str] | None = None,
        config: EvalConfig | None = None,
        drift_cache: str | None = None,
        every_epoch: list[str] | None = None,
    ) -> None:
        self.every_n_steps = every_n_steps
        self.periodic = check_groups(["accuracy", "entropy"] if periodic is None else periodic, "periodic")
        self.start = check_groups(list(GROUPS) if start is None else start, "start")
        self.final = check_groups(list(GROUPS) if final is None else final, "final")
        self.every_epoch = check_groups(every_epoch or [], "every_epoch")
        if every_n_steps < 0:
            raise ValueError(f"GenerationEval every_n_steps must be >= 0, got {every_n_steps}")
        self.suite = EvalSuite(config)
        self.drift_cache = drift_cache
        self.history: list[tuple[int, dict[str, float]]] = []
        self.epochs: list[dict] = []  # per epoch end: its step, metrics and per-item values (every_epoch)
        self.final_metrics: dict[str, float] = {}  # what the ``final`` sets measured
        self.final_items: dict[str, list] = {}  # and their per-item values
        self._items: dict[int, dict[str, list]] = {}  # per step, before the final sets: mc, drift, if
        self._done: dict[int, set[str]] = {}

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, groups: list[str]
    ) -> dict[str, float]:
        """Run ``groups`` not yet evaluated at this step, log them and keep them in ``history``."""
        step = trainer.global_step
        todo = [g for g in groups if g not in self._done.get(step, set())]
        if not todo:
            return {}
        begin = time.perf_counter()
        cache = self.drift_cache or os.path.join(trainer.default_root_dir, "drift_reference.jsonl")
        base_is_policy = trainer.state.fn == TrainerFn.FITTING and step == 0
        metrics = self.suite.run(subject(pl_module, base_is_policy), todo, cache)
        metrics["perf/eval_seconds"] = time.perf_counter() - begin
        self._done.setdefault(step, set()).update(todo)
        self.history.append((step, metrics))
        self._items.setdefault(step, {}).update(self.suite.items)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        log.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start:
            self.evaluate(trainer, pl_module, self.start)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: no optimizer step was taken
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module, self.periodic)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's weights on ``every_epoch`` (a set already measured at this step is reused)."""
        if not self.every_epoch:
            return
        step = trainer.global_step
        self.evaluate(trainer, pl_module, self.every_epoch)
        metrics = {k: v for at, m in self.history if at == step for k, v in m.items()}
        metrics.pop("perf/eval_seconds", None)
        self.epochs.append({"step": step, "metrics": metrics, "items": dict(self._items.get(step, {}))})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.final:
            self._final(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking and self.final:
            self._final(trainer, pl_module)

    def _final(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.final_metrics = self.evaluate(trainer, pl_module, self.final)
        self.final_items = dict(self.suite.items) if self.final_metrics else {}


def subject(pl_module: L.LightningModule, base_is_policy: bool) -> Subject:
    """The module's policy as an evaluation subject; its base model is the policy itself before the
    first step, else loaded afresh from the run's model settings (once: answers are then cached)."""
    settings = pl_module.settings
    policy = pl_module.policy

    def load_base():
        return policy if base_is_policy else load_model(settings.model, settings.tiny_config)

    tokenizer = load_tokenizer(settings.model)
    return Subject(policy, pl_module.token_stats, tokenizer, settings.model, load_base)
