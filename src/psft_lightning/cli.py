"""The ``psft`` command: LightningCLI over PSFTModule and PSFTDataModule.

``psft fit --config configs/psft.yaml`` trains; ``--print_config`` prints a complete runnable config.
``psft export <checkpoint> <out_dir>`` writes a trained checkpoint as a Hugging Face model directory.
Every run writes checkpoints atomically and saves ``last.ckpt`` when it is stopped with SIGTERM, and
its TensorBoard logger gets the Dashboard (custom-scalars layout, HPARAMS) and no ``hp_metric`` placeholder.
Problems with the user's data or settings are printed as one paragraph, without a traceback.
"""

from __future__ import annotations

import logging
import sys
import warnings

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from psft_lightning.callbacks.dashboard import Dashboard, without_hp_metric
from psft_lightning.checkpointing import CheckpointOnSignal, use_atomic_checkpoints
from psft_lightning.data import PSFTDataModule
from psft_lightning.errors import ConfigError, PSFTError
from psft_lightning.module import PSFTModule
from psft_lightning.objectives import available_objectives


class PSFTCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: the module has no test or predict step."""
        kept = ("fit", "validate")
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in kept}

    def add_arguments_to_parser(self, parser) -> None:
        # the tokenizer always matches the model being trained
        parser.link_arguments("model.model", "data.tokenizer")

    def before_instantiate_classes(self) -> None:
        available_objectives()  # import entry-point plugins so their classes resolve by class_path

    def _parse_ckpt_path(self) -> None:
        """Keep the run's own config with ``--ckpt_path``: Lightning would re-parse the checkpoint's
        hyper-parameters as model arguments, and they also hold records that are not arguments
        (``objective_name``), so resume and validate failed. PSFTModule.on_load_checkpoint refuses a
        checkpoint of another objective or model instead."""

    def instantiate_trainer(self, **kwargs):
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as err:
            if "gpu" not in str(err).lower():  # only a strategy that needs GPUs this machine lacks
                raise
            raise ConfigError(f"trainer.strategy cannot run on this machine: {err}. {SHARDING_HINT}") from err
        if self._get(self.config_init, "trainer", default={}).get("logger") in (None, True):
            without_hp_metric(trainer)
        check_backend(trainer.strategy)
        use_atomic_checkpoints(trainer)
        return trainer


SHARDING_HINT = (
    "Lightning's FSDPStrategy and the NCCL backend need CUDA GPUs; on CPU (or to test a sharded run "
    "here) use strategy psft_lightning.strategies.FSDP2Strategy, which runs FSDP2 over gloo."
)


def check_backend(strategy) -> None:
    """Fail before any process is launched when the strategy's collective backend cannot run here."""
    backend = getattr(strategy, "process_group_backend", None)
    if backend is None:
        return
    if not torch.distributed.is_available():
        raise ConfigError(
            f"trainer.strategy {type(strategy).__name__} needs torch.distributed, which this PyTorch build "
            "lacks; install a PyTorch build with distributed support or train on one device"
        )
    if "nccl" in str(backend) and not (torch.cuda.is_available() and torch.distributed.is_nccl_available()):
        raise ConfigError(
            f"trainer.strategy {type(strategy).__name__} asks for process_group_backend {backend!r}, "
            f"which needs CUDA GPUs and a PyTorch build with NCCL; this machine has none. {SHARDING_HINT}"
        )


def run_cli(args: list[str] | None = None, run: bool = True) -> PSFTCLI:
    """Parse ``args`` (default: the command line), build the run and execute its subcommand
    (with ``run=False`` only build it: ``args`` then has no subcommand)."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    return PSFTCLI(
        PSFTModule,
        PSFTDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
        trainer_defaults={"callbacks": [CheckpointOnSignal(), Dashboard()]},
        args=args,
        run=run,
    )


DESCRIPTION = (
    "Fine-tune a causal LM with SFT (ce), SFT-KL (kl), PSFT (psft) or PSFT with warm-up (psft_warmup): "
    "psft fit --config configs/psft.yaml. Export a checkpoint as a Hugging Face model directory with "
    "psft export CHECKPOINT OUT_DIR (psft export --help)."
)

QUIET_WARNINGS = (
    # the frozen KL reference and old-policy snapshot are submodules kept in eval mode on purpose
    r".*module\(s\) in eval mode.*",
    # StepBatches resumes from the trainer's optimizer step, not from a dataloader state_dict
    r".*dataloader is not resumable.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def main(args: list[str] | None = None) -> None:
    """Console entry point: user errors exit with status 2 and a one-paragraph message."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["export"]:
            from psft_lightning.export import export_main

            export_main(argv[1:])
        else:
            run_cli(None if args is None else argv)  # None: LightningCLI warns when given sys.argv
    except PSFTError as err:
        print(f"psft: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
