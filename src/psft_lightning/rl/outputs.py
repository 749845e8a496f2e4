"""What a TRL run leaves behind: one log row per optimizer step and the trained model.

TRL's own checkpoints are not kept; the result is ``out_dir/model`` (a Hugging Face directory, as
``psft export`` writes) and the step log as JSON Lines.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from torch import nn

from psft_lightning.export import write_model

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def step_timer():
    """A callback that times each optimizer step (GRPO's generation included)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def step_rows(log_history: list[dict], seconds: list[float], metrics: dict[str, str]) -> list[dict]:
    """One row per optimizer step from TRL's log history, ``metrics`` mapping TRL's names to ours
    (the final summary row has none of them and is left out)."""
    rows = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        row = {"step": int(entry["step"])}
        row.update({ours: entry[theirs] for theirs, ours in metrics.items() if theirs in entry})
        if row["step"] <= len(seconds):
            row["seconds"] = seconds[row["step"] - 1]
        rows.append(row)
    return rows


def save_run(model: nn.Module, tokenizer, out_dir: Path, rows: list[dict], log_name: str) -> None:
    """Write the model and the step log; a non-finite logged value is reported, not hidden."""
    bad = [row["step"] for row in rows if not all(math.isfinite(v) for v in row.values())]
    if bad:
        log.warning("steps %s logged a non-finite value (see %s)", bad, out_dir / log_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_model(model, tokenizer, out_dir / MODEL_DIR)
    write_jsonl(out_dir / log_name, rows)
    log.info("%d steps; model in %s, log in %s", len(rows), out_dir / MODEL_DIR, out_dir / log_name)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """``rows`` as JSON Lines."""
    with open(path, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def read_jsonl(path: Path) -> list[dict]:
    """The rows ``write_jsonl`` wrote."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
