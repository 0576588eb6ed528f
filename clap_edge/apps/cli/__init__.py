"""The ``clap-edge`` command line: a thin click layer over the Python API.

Each command lives in its own module here and imports heavy libraries inside the
command, so ``clap-edge --help`` stays fast and the runtime commands work without torch.
"""

from __future__ import annotations

import importlib
import inspect
import sys

import click

from clap_edge import __version__
from clap_edge.apps.cli.exitcodes import BAD_INPUT
from clap_edge.core.errors import ClapEdgeError, os_error_line

# Modules in this package that each define one or more commands; each exposes ``COMMANDS``.
COMMAND_MODULES = ["train", "bench", "classify", "export", "toy", "evaluate", "demo", "models", "sign", "engine", "serve",
                   "classes", "adapt"]

# Top-level module of a library a command imports -> the pip extra that installs it (pyproject.toml).
EXTRA_FOR_MODULE = {
    "torch": "train", "torchvision": "train", "open_clip": "train", "onnx": "train", "onnxscript": "train",
    "matplotlib": "train", "yaml": "train", "openvino": "openvino", "tensorrt": "gpu",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra whose absence raised ``error`` (None when it is not a library an extra provides)."""
    return EXTRA_FOR_MODULE.get((error.name or "").split(".")[0])


class ClapEdgeGroup(click.Group):
    """Turns ClapEdgeError, and a library of a missing extra, into one line on stderr and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            # click prints usage + hint + error (three lines); bad input here is one line, where to look, exit 2
            where = " ".join(["clap-edge", *(e.ctx.command_path.split()[1:] if e.ctx else [])])
            _fail(f"error: {e.format_message()} (see `{where} --help`)")
        except ClapEdgeError as e:
            _fail(f"error: {e}")
        except ModuleNotFoundError as e:
            extra = missing_extra(e)
            if extra is None:
                raise
            _fail(f"error: `clap-edge {ctx.invoked_subcommand}` needs the [{extra}] extra ({e.name} is not installed): "
                  f"pip install 'clap-edge[{extra}]'")
        except OSError as e:
            if e.errno is None:  # not from the operating system: a bug, keep its traceback
                raise
            # a path that cannot be read or written (full disk, /proc, read-only, permissions): one line, exit 2;
            # writers stage into temp files, so nothing half-written is left behind
            _fail(f"error: {os_error_line(e)}")


def _fail(line: str) -> None:
    click.secho(line, fg="red", err=True)
    sys.exit(BAD_INPUT)


@click.group(cls=ClapEdgeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="clap-edge")
def main() -> None:
    """Train CLAP heads on frozen open_clip models, export them as bundles and run them fast.

    \b
    Example:
      clap-edge demo --out demo-out
    """


EXAMPLE_MARK = "\b\nExample"


def _example_last(command: click.Command) -> None:
    """Move the docstring's example block (from ``\\b`` + ``Example``) to the epilog, so that
    ``--help`` ends with it, after the options, where a reader looks for it."""
    head, mark, example = inspect.cleandoc(command.help or "").partition(EXAMPLE_MARK)
    if mark and not command.epilog:
        command.help, command.epilog = head.rstrip(), mark + example
    for sub in getattr(command, "commands", {}).values():
        _example_last(sub)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"clap_edge.apps.cli.{name}")
        for command in module.COMMANDS:
            _example_last(command)
            main.add_command(command)
    _example_last(main)


_register_commands()
