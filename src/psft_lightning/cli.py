"""The ``psft`` command: one entry point over the subcommands.

``psft fit --config configs/psft.yaml`` trains and ``psft validate`` evaluates (``fit.run_cli``:
LightningCLI over PSFTModule and PSFTDataModule); ``--print_config`` prints a complete runnable config.
``psft export <checkpoint> <out_dir>`` writes a trained checkpoint as a Hugging Face model directory;
``psft objectives`` lists the objectives, ``psft study`` runs the reproduction study, ``psft plot``
draws runs' curves, ``psft grpo`` and ``psft dpo`` run GRPO and DPO on an exported model.
Problems with the user's data or settings are printed as one paragraph, without a traceback.
"""

from __future__ import annotations

import logging
import sys

from psft_lightning.checkpointing import PREEMPTED_EXIT_CODE, Preempted
from psft_lightning.errors import PSFTError
from psft_lightning.fit import rewrite_objective_names, run_cli

__all__ = ["main", "run_cli"]


def user_error(err: BaseException) -> PSFTError | None:
    """The PSFTError behind ``err``: jsonargparse wraps errors raised while it builds a plugin, a callback
    or the data module in a ValueError of its own; the first user error in the chain is the message."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, PSFTError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


COMMANDS = {
    "fit": "train: psft fit --config configs/psft.yaml",
    "validate": "evaluate a checkpoint on the validation data",
    "export": "write a checkpoint as a Hugging Face model directory: psft export CHECKPOINT OUT_DIR",
    "objectives": "list every objective, plugins included, with its hyper-parameters",
    "study": "the reproduction study of the PSFT paper's claims, with its results page",
    "plot": "draw TensorBoard runs as PNG comparison plots",
    "grpo": "GRPO (TRL) with an exact-match reward on an exported model: psft grpo --model DIR ...",
    "dpo": "DPO (TRL) on pairs of a model's own correct/incorrect samples: psft dpo --model DIR ...",
    "eval": "score a checkpoint or model with lm-eval: psft eval CHECKPOINT_OR_DIR --tasks psft",
}
DESCRIPTION = (
    "Fine-tune a causal LM with SFT (ce), SFT-KL (kl), PSFT (psft), PSFT with warm-up (psft_warmup) or "
    "the SFT family (psft objectives). Subcommands: "
    + "; ".join(f"{name}: {what}" for name, what in COMMANDS.items())
    + ". psft SUBCOMMAND --help describes each."
)
USAGE = f"psft {{{','.join(COMMANDS)}}} ..."


def main(args: list[str] | None = None) -> None:
    """Console entry point: user errors exit with status 2 and a one-paragraph message."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["export"]:
            from psft_lightning.export import export_main

            export_main(argv[1:])
        elif argv[:1] == ["objectives"]:
            from psft_lightning.objectives.catalog import objectives_main

            objectives_main(argv[1:])
        elif argv[:1] == ["study"]:
            from psft_lightning.study.reproduce import main as study_main

            study_main(argv[1:])
        elif argv[:1] == ["eval"]:
            from psft_lightning.harness import eval_main

            eval_main(argv[1:])
        elif argv[:1] == ["plot"]:
            from psft_lightning.study.plots import main as plot_main

            plot_main(argv[1:])
        elif argv[:1] == ["grpo"]:
            from psft_lightning.rl.cli import grpo_main

            grpo_main(argv[1:])
        elif argv[:1] == ["dpo"]:
            from psft_lightning.rl.cli import dpo_main

            dpo_main(argv[1:])
        else:
            rewritten = rewrite_objective_names(argv)
            if args is None and rewritten != argv:
                sys.argv[1:] = rewritten
            # None: LightningCLI warns when given sys.argv
            run_cli(None if args is None else rewritten, description=DESCRIPTION, usage=USAGE)
    except Preempted as stop:
        print(f"psft: {stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"psft: error: {problem}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
