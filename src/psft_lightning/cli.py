"""The ``psft`` command: LightningCLI over PSFTModule and PSFTDataModule.

``psft fit --config configs/psft.yaml`` trains; ``--print_config`` prints a complete runnable config.
Problems with the user's data or settings are printed as one paragraph, without a traceback.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.cli import LightningCLI

from psft_lightning.data import PSFTDataModule
from psft_lightning.errors import PSFTError
from psft_lightning.module import PSFTModule
from psft_lightning.objectives import available_objectives


class PSFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # the tokenizer always matches the model being trained
        parser.link_arguments("model.model", "data.tokenizer")

    def before_instantiate_classes(self) -> None:
        available_objectives()  # import entry-point plugins so their classes resolve by class_path


def run_cli(args: list[str] | None = None) -> PSFTCLI:
    """Parse ``args`` (default: the command line), build the run and execute its subcommand."""
    return PSFTCLI(
        PSFTModule,
        PSFTDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point: user errors exit with status 2 and a one-paragraph message."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_cli(args)
    except PSFTError as err:
        print(f"psft: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
