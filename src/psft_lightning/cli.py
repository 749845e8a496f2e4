"""The ``psft`` command: one entry point, dispatching fit/validate to ``fit.run_cli`` and the rest by
``SUBCOMMANDS``.

``psft fit --config configs/psft.yaml`` trains and ``psft validate`` evaluates (``fit.run_cli``:
LightningCLI over PSFTModule and PSFTDataModule); ``--print_config`` prints a complete runnable config.
``psft export <checkpoint> <out_dir>`` writes a trained checkpoint as a Hugging Face model directory;
``psft objectives`` lists the objectives, ``psft study`` runs the reproduction study, ``psft plot``
draws runs' curves, ``psft grpo`` and ``psft dpo`` run GRPO and DPO on an exported model.
Every run writes checkpoints atomically and saves ``last.ckpt`` when it is stopped with SIGTERM or Ctrl-C
(exit 143 / 130; a non-finite loss or gradient stops it with exit 3, ``errors.EXIT_*``).
Problems with the user's data or settings are printed as one paragraph, without a traceback.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from psft_lightning.allocator import keep_freed_memory
from psft_lightning.boundary import error_boundary
from psft_lightning.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_USER_ERROR, Diverged
from psft_lightning.fit import rewrite_objective_names, run_cli
from psft_lightning.stopping import Preempted, stop_before_training

__all__ = ["main", "run_cli"]


@dataclass(frozen=True)
class Subcommand:
    """What ``psft --help`` says of a subcommand, and its function as ``module:name``, imported only when
    it runs (optional packages such as trl and lm-eval stay unloaded otherwise)."""

    help: str
    target: str

    def function(self) -> Callable[[list[str]], Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


# Adding a subcommand is one row here: a function main(argv) whose parser is commands.command_parser.
SUBCOMMANDS = {
    "export": Subcommand(
        "write a checkpoint as a Hugging Face model directory: psft export CHECKPOINT OUT_DIR",
        "psft_lightning.export:export_main",
    ),
    "objectives": Subcommand(
        "list every objective, plugins included, with its hyper-parameters",
        "psft_lightning.objectives.catalog:objectives_main",
    ),
    "study": Subcommand(
        "the reproduction study of the PSFT paper's claims, with its results page",
        "psft_lightning.study.reproduce:main",
    ),
    "plot": Subcommand("draw TensorBoard runs as PNG comparison plots", "psft_lightning.study.plots:main"),
    "grpo": Subcommand(
        "GRPO (TRL) with an exact-match reward on an exported model: psft grpo --model DIR ...",
        "psft_lightning.rl.cli:grpo_main",
    ),
    "dpo": Subcommand(
        "DPO (TRL) on pairs of a model's own correct/incorrect samples: psft dpo --model DIR ...",
        "psft_lightning.rl.cli:dpo_main",
    ),
    "eval": Subcommand(
        "score a checkpoint or model with lm-eval: psft eval CHECKPOINT_OR_DIR --tasks psft",
        "psft_lightning.harness:eval_main",
    ),
}


COMMANDS = {
    "fit": "train: psft fit --config configs/psft.yaml",
    "validate": "evaluate a checkpoint on the validation data",
    **{name: command.help for name, command in SUBCOMMANDS.items()},
}
DESCRIPTION = (
    "Fine-tune a causal LM with SFT (ce), SFT-KL (kl), PSFT (psft), PSFT with warm-up (psft_warmup) or "
    "the SFT family (psft objectives). Subcommands: "
    + "; ".join(f"{name}: {what}" for name, what in COMMANDS.items())
    + ". psft SUBCOMMAND --help describes each."
)
USAGE = f"psft {{{','.join(COMMANDS)}}} ..."


def fit_or_validate(argv: list[str], from_sys_argv: bool) -> None:
    """``psft fit``/``validate`` through LightningCLI; the first Ctrl-C before the fit's own handler
    stops at once (nothing to save yet)."""
    rewritten = rewrite_objective_names(argv)
    if from_sys_argv and rewritten != argv:
        sys.argv[1:] = rewritten
    previous = signal.signal(signal.SIGINT, stop_before_training)  # until the fit's own handler
    try:
        # None: LightningCLI warns when given sys.argv
        run_cli(None if from_sys_argv else rewritten, description=DESCRIPTION, usage=USAGE)
    finally:
        signal.signal(signal.SIGINT, previous)


def usage() -> str:
    """What ``psft`` alone prints: every subcommand, not only LightningCLI's fit and validate."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "\n".join([f"usage: {USAGE}", "", "subcommands:", *lines, "", HELP_LINE])


HELP_LINE = "psft SUBCOMMAND --help describes each; psft --version prints the version."


def main(args: list[str] | None = None) -> None:
    """Console entry point: every outcome is an exit status of errors.py, with one paragraph for a
    user or environment fault (``boundary``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if args is None else list(args)
    if not argv:
        print(f"psft: error: a subcommand is required\n{usage()}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if argv[0] == "--version":
        print(f"psft-lightning {version('psft-lightning')}")
        return
    keep_freed_memory()
    with error_boundary():
        try:
            command = SUBCOMMANDS.get(argv[0])
            if command is not None:
                command.function()(argv[1:])
            else:
                fit_or_validate(argv, from_sys_argv=args is None)
        except Preempted as stop:
            print(f"psft: {stop}", file=sys.stderr)
            sys.exit(stop.exit_code)
        except KeyboardInterrupt:
            print("psft: interrupted (Ctrl-C)", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except Diverged as err:
            print(f"psft: error: {err}", file=sys.stderr)
            sys.exit(EXIT_DIVERGED)


if __name__ == "__main__":
    main()
