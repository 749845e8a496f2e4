"""``psft fit`` and ``psft validate``: LightningCLI over PSFTModule and PSFTDataModule, as library code.

``run_cli`` is what the ``psft`` command runs for them; ``run_from_config`` runs one subcommand from a config
file in this process, through the same CLI (the study's runs). ``--print_config`` prints a complete
runnable config. Every run writes checkpoints atomically and saves ``last.ckpt`` when it is stopped with
SIGTERM, and its TensorBoard logger gets the Dashboard (custom-scalars layout, HPARAMS) and no
``hp_metric`` placeholder.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from psft_lightning.callbacks.dashboard import Dashboard, without_hp_metric
from psft_lightning.checkpointing import use_atomic_checkpoints
from psft_lightning.data import PSFTDataModule
from psft_lightning.data.hub import is_hub
from psft_lightning.errors import ConfigError
from psft_lightning.module import PSFTModule
from psft_lightning.objectives import available_objectives, objective_class
from psft_lightning.precision import auto_precision, precision_line
from psft_lightning.resume import resolve_checkpoint
from psft_lightning.stopping import CheckpointOnSignal

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Fine-tune a causal LM: psft fit --config configs/psft.yaml; psft validate evaluates a checkpoint."
)
USAGE = "psft {fit,validate} ..."


class PSFTArgumentParser(LightningArgumentParser):
    """Adds to jsonargparse's messages what they leave out: what to write instead for hyper-parameters
    of a bare objective name, and which config file a YAML syntax error is in."""

    def parse_args(self, args=None, *rest, **kwargs):
        self.psft_args = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if "objective" in message and "Expected a dot import path string" in message:
            message += objective_hint(message)
        if "<unicode string>" in message:
            message = name_config_file(message, getattr(self, "psft_args", sys.argv[1:]))
        return super().error(message, ex)


def objective_hint(message: str) -> str:
    """Only a registered name where a class is expected gets the hint (not a wrong value of a class)."""
    name = message.split("Expected a dot import path string:", 1)[1].split()[0]
    if name not in available_objectives():
        return ""
    cls = objective_class(name)
    return OBJECTIVE_ARGS_HINT.format(name=name, path=f"{cls.__module__}.{cls.__qualname__}")


def name_config_file(message: str, argv: list[str]) -> str:
    """Put the path of the config file that YAML cannot parse where jsonargparse writes "<unicode string>"."""
    configs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    configs += [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    for config in configs:
        try:
            yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        except yaml.YAMLError:
            return message.replace("<unicode string>", config)
    return message


OBJECTIVE_ARGS_HINT = (
    "\n{name!r} is a registered objective name, not a class: a name takes no init_args in a config file, "
    "nor goes in class_path. To set its hyper-parameters give its class: objective: {{class_path: {path}, "
    "init_args: {{...}}}}; on the command line --model.objective {name} --model.objective.init_args.KEY "
    "VALUE works as written. `psft objectives` lists each objective's hyper-parameters."
)


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
        if self.subcommand:  # a command runs now (``run=False`` only builds the objects)
            cfg = self.config[self.subcommand]
            check_data_paths(cfg)
            check_accumulation(cfg)
            resolve_checkpoint(cfg, fitting=self.subcommand == "fit")
            choose_precision(cfg)

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


def choose_precision(cfg) -> None:
    """An unset ``trainer.precision`` becomes bf16-mixed where the hardware has bf16 units, else fp32."""
    if cfg.trainer.get("precision") is not None:
        return
    cfg.trainer.precision, reason = auto_precision(cfg.trainer.get("accelerator"))
    log.info(precision_line(cfg.trainer.precision, reason))


def check_accumulation(cfg) -> None:
    """Below 1, Lightning divides by zero (0) or never reaches an optimizer step (< 0: a silent hang)."""
    accumulate = cfg.trainer.get("accumulate_grad_batches")
    if isinstance(accumulate, int) and accumulate < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches must be >= 1 (micro-batches per optimizer step), "
            f"got {accumulate}"
        )


def check_data_paths(cfg) -> None:
    """Relative data paths resolve from the working directory (as on the command line); a missing one is
    explained at once, with where it exists relative to a ``--config`` file's folders, if anywhere."""
    configs = [Path(getattr(path, "absolute", path)) for path in cfg.get("config") or []]
    for key in ("train_files", "val_files"):
        paths = cfg.data.get(key) or []
        for path in [paths] if isinstance(paths, str) else paths:
            if is_hub(path) or Path(path).is_absolute() or Path(path).exists():
                continue
            near = [
                folder
                for config in configs
                for folder in (config.parent, *config.parent.parents)
                if (folder / path).exists()
            ]
            hint = f"; it exists under {near[0]}: run psft from there, or give the full path" if near else ""
            raise ConfigError(
                f"data.{key}: {path} not found. Relative paths resolve from the working directory "
                f"({os.getcwd()}), not from the config file{hint}"
            )


def rewrite_objective_names(argv: list[str]) -> list[str]:
    """``--model.objective kl`` becomes the class path of ``kl``, so ``--model.objective.init_args.*``
    (a short name with hyper-parameters) applies to it as it would to ``class_path``."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--model.objective="):
            name, prefix = arg.split("=", 1)[1], "--model.objective="
        elif arg == "--model.objective" and i + 1 < len(out):
            name, prefix, i = out[i + 1], "", i + 1
        else:
            continue
        if name in available_objectives():
            cls = objective_class(name)
            out[i] = f"{prefix}{cls.__module__}.{cls.__qualname__}"
    return out


def run_cli(
    args: list[str] | None = None, run: bool = True, description: str = DESCRIPTION, usage: str = USAGE
) -> PSFTCLI:
    """Parse ``args`` (default: the command line), build the run and execute its subcommand
    (with ``run=False`` only build it: ``args`` then has no subcommand)."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    return PSFTCLI(
        PSFTModule,
        PSFTDataModule,
        seed_everything_default=0,
        parser_class=PSFTArgumentParser,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": description, "usage": usage},
        trainer_defaults={"callbacks": [CheckpointOnSignal(), Dashboard()]},
        args=args,
        run=run,
    )


def run_from_config(subcommand: str, config: str | Path) -> PSFTCLI:
    """Run ``psft SUBCOMMAND --config CONFIG`` in this process, through the same CLI as ``psft fit``,
    never reading this process's own command line; the built CLI (trainer, model, data) is returned."""
    with warnings.catch_warnings():  # Lightning warns that the process's own argv is not what it parses
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return run_cli([subcommand, "--config", str(config)])


QUIET_WARNINGS = (
    # the frozen KL reference and old-policy snapshot are submodules kept in eval mode on purpose
    r".*module\(s\) in eval mode.*",
    # StepBatches resumes from the trainer's optimizer step, not from a dataloader state_dict
    r".*dataloader is not resumable.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)
