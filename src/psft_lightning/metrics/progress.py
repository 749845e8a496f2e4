"""A progress bar that reads well for step-based fine-tuning: short metric names, no version number,
and no "Epoch 0/-2" when the run is bounded by ``max_steps``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

SHORT_NAMES = {
    "train/loss": "loss",
    "train/nll": "nll",
    "train/tokens_per_sec": "tok/s",
    "val/loss": "val_loss",
}


def short_metrics(items: dict[str, Any]) -> dict[str, Any]:
    """Drop Lightning's ``v_num``, shorten the tags shown and print tokens/s as a whole number."""
    shown = {}
    for name, value in items.items():
        if name == "v_num":
            continue
        if name == "train/tokens_per_sec" and isinstance(value, float):
            value = f"{value:.0f}"
        shown[SHORT_NAMES.get(name, name)] = value
    return shown


class StepRichProgressBar(RichProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        return short_metrics(super().get_metrics(trainer, pl_module))

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"


class StepTQDMProgressBar(TQDMProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        return short_metrics(super().get_metrics(trainer, pl_module))


def step_progress_bar(bar: ProgressBar | None) -> ProgressBar | None:
    """Our bar in place of Lightning's default one; a user's own bar (or none) is left alone."""
    if type(bar) is RichProgressBar:
        return StepRichProgressBar(refresh_rate=bar.refresh_rate, leave=bar._leave, theme=bar.theme)
    if type(bar) is TQDMProgressBar:
        return StepTQDMProgressBar(refresh_rate=bar.refresh_rate, leave=bar._leave)
    return None
