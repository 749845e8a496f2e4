"""The one parser style of ``psft``'s subcommands beside ``fit`` and ``validate``.

A subcommand is a function ``main(argv)`` in its own module that parses ``argv`` with ``command_parser``
(jsonargparse: ``--config FILE`` reads its arguments from YAML and ``--print_config`` writes them) and
runs; it is registered by one row of ``cli.SUBCOMMANDS``. This module imports nothing of the package, so
every subcommand can use it without a circle.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser


def command_parser(prog: str, description: str | None, **kwargs: Any) -> ArgumentParser:
    """A subcommand's parser: argparse's ``add_argument``, plus ``--config`` and ``--print_config``."""
    parser = ArgumentParser(prog=prog, description=description, **kwargs)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a YAML file of these arguments (--print_config writes one)"
    )
    return parser
