"""The rich Console that CLI tables print to stdout: never narrower than its table when piped.

rich sizes a console that is not a terminal at 80 columns (or $COLUMNS) and then wraps or cuts cells
to fit; a table piped into a file or ``grep`` must keep every name whole, so off a terminal the width
is unbounded (a rich Table is only as wide as its content).
"""

from __future__ import annotations

import sys

PIPED_WIDTH = 1_000  # columns when stdout is not a terminal: wide enough for any row, never used to pad


def stdout_console(min_width: int = 0):
    """A Console on stdout: the terminal's width (at least ``min_width``) or, piped, no practical limit."""
    from rich.console import Console

    if not sys.stdout.isatty():
        return Console(width=PIPED_WIDTH, soft_wrap=False)
    console = Console()
    return Console(width=max(console.width, min_width)) if min_width > console.width else console


__all__ = ["stdout_console"]
