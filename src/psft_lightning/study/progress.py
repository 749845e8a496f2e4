"""What a study has finished, so that the same command, run again after a kill, continues it.

A run is finished when its record exists (``<runs-dir>/seedN/<name>.json``; an RL follow-up's
``<runs-dir>/rl_<objective>.json``): the study writes it atomically as the last thing the run does, so
a record is whole or absent. Run again, the study keeps those runs and redoes the others from their
start. The settings its runs were made with are in ``<runs-dir>/study.json``; a run with other settings
is refused, and ``psft study --restart`` removes the study's own entries of ``<runs-dir>`` (its manifest,
``owned``) and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from psft_lightning.errors import ConfigError
from psft_lightning.owned import remove_recorded
from psft_lightning.stopping import SIGNAL_NAMES, Preempted, stop_before_training
from psft_lightning.study.budgets import Budget
from psft_lightning.study.objectives import objective_configs
from psft_lightning.study.selection import Task

SETTINGS_FILE = "study.json"
FLAGS = {"seeds": "--seeds", "refresh_sweep": "--refresh-sweep"}  # budget fields a flag overrides
# settings only the RL follow-up depends on: its record keeps them, and other values redo only it
# (``follow_up.follow_up``), so a finished study can be continued with ``--rl``
FOLLOW_UP_SETTINGS = ("budget.rl",)


def write_json(path: Path, data: object) -> None:
    """Write ``data`` whole or not at all: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(partial, path)


def finished(path: Path) -> dict | None:
    """The record of a finished run or follow-up at ``path``, or None while it is not finished."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def digest(path: str) -> str | None:
    """The SHA-256 of a data or config file (None for a folder or a hub dataset: compared by name)."""
    if not os.path.isfile(path):
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def settings(budget_name: str, budget: Budget, task: Task, model: str, root: Path) -> dict:
    """Everything the study's runs depend on, each under the name a refusal shows."""
    flags = {f"--{name.replace('_', '-')}": value for name, value in asdict(task).items()}
    files = {f"{flag} contents": digest(path) for flag, path in flags.items() if flag.endswith("-file")}
    configs = {f"configs/{path.name}": digest(str(path)) for path in objective_configs(root).values()}
    values = {
        "psft-lightning version": version("psft-lightning"),
        "--budget": budget_name,
        **{FLAGS.get(name, f"budget.{name}"): value for name, value in asdict(budget).items()},
        "--model": model,
        **flags,
        **files,
        **configs,
    }
    return json.loads(json.dumps(values))  # as study.json holds them (tuples are lists)


def begin_study(runs_dir: Path, owner: str, now: dict, restart: bool) -> bool:
    """Start the study in ``runs_dir`` or continue the one there; True when it continues.

    A fresh start (``restart``, or no ``study.json``: nothing or an earlier version's study) removes
    ``owner``'s recorded entries and nothing else; a continuation keeps them and needs the same settings.
    """
    path = runs_dir / SETTINGS_FILE
    before = None if restart else earlier(path)
    if before is not None and trained(before) != trained(now):
        before, now = trained(before), trained(now)
        changed = [name for name in now.keys() | before.keys() if before.get(name) != now.get(name)]
        shown = "; ".join(
            f"{name} was {short(before.get(name))}, now {short(now.get(name))}" for name in sorted(changed)
        )
        raise ConfigError(
            f"--runs-dir {runs_dir} holds a study with other settings ({shown}); running the same command "
            "again continues it. To start afresh there, pass --restart (it removes only what psft study "
            "wrote in that folder); or give another --runs-dir"
        )
    if before is None:
        remove_recorded(runs_dir, owner)
    write_json(path, now)
    return before is not None


def trained(settings: dict) -> dict:
    """The settings the trained runs depend on (the RL follow-up's left out)."""
    return {name: value for name, value in settings.items() if name not in FOLLOW_UP_SETTINGS}


def earlier(path: Path) -> dict | None:
    """The settings of the study in ``path``'s folder, or None when none was started there."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path} is not a study's settings ({err}); pass --restart to start the study afresh"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a study's settings; pass --restart to start the study afresh")
    return data


def short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def same_grpo(follow_up: dict, rl: dict) -> bool:
    """Whether a finished GRPO follow-up was made with the GRPO settings ``rl`` (its seed aside): such
    a follow-up is kept, one of other settings redone."""
    return {k: v for k, v in follow_up.get("settings", {}).items() if k != "seed"} == rl


def recorded_seconds(runs_dir: Path, rl: dict) -> float:
    """The wall time of the runs and follow-ups an earlier invocation finished (0 for a fresh start):
    the study's ``seconds`` counts them, so a continued study reports what all of it took. A GRPO
    follow-up counts only when kept (``same_grpo`` as the budget's ``rl``): a redone one's time is
    replaced by the new one's."""
    total = 0.0
    for path in [*runs_dir.glob("seed*/*.json"), *runs_dir.glob("refresh/*.json")]:
        total += float((finished(path) or {}).get("wall_seconds", 0.0))
    for path in runs_dir.glob("rl_*.json"):
        record = finished(path) or {}
        if not same_grpo(record, rl):
            continue
        total += float(record.get("grpo_seconds", 0.0))
        total += float(record.get("after", {}).get("wall_seconds", 0.0))
    return total


class StudyStopped(Preempted):
    """``psft study`` stopped by SIGTERM or Ctrl-C (exit 143 / 130): the same command continues it."""

    def __init__(self, signum: int, runs_dir: Path) -> None:
        super().__init__(None, None, signum)
        self.args = (
            f"psft study stopped by {SIGNAL_NAMES.get(signum, signum)}: the runs it finished are kept in "
            f"{runs_dir}; run the same command again to continue (an unfinished run starts over)",
        )


@contextmanager
def stops_to_continue(runs_dir: Path) -> Iterator[None]:
    """SIGTERM or Ctrl-C anywhere in the study (a fit's own handler first saves and stops it) end it
    with :class:`StudyStopped`, which says how to continue."""
    previous = {signum: signal.signal(signum, stop_before_training) for signum in SIGNAL_NAMES}
    try:
        yield
    except Preempted as stop:
        raise StudyStopped(stop.exit_code - 128, runs_dir) from None
    except KeyboardInterrupt:
        raise StudyStopped(signal.SIGINT, runs_dir) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
