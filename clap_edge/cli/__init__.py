"""The ``clap-edge`` command line: a thin click layer over the Python API.

Each command lives in its own module here and imports heavy libraries inside the
command, so ``clap-edge --help`` stays fast and the runtime commands work without torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from clap_edge import __version__
from clap_edge.errors import ClapEdgeError

# Modules in this package that each define one or more commands; each exposes ``COMMANDS``.
COMMAND_MODULES = ["train", "bench", "classify", "export", "toy", "evaluate", "demo"]

EXIT_BAD_INPUT = 2


class ClapEdgeGroup(click.Group):
    """Turns ClapEdgeError into a one-line message and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ClapEdgeError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(EXIT_BAD_INPUT)


@click.group(cls=ClapEdgeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="clap-edge")
def main() -> None:
    """Train CLAP heads on frozen open_clip models, export them as bundles and run them fast.

    \b
    Example:
      clap-edge demo --out demo-out
    """


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"clap_edge.cli.{name}")
        for command in module.COMMANDS:
            main.add_command(command)


_register_commands()
