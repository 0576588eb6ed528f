"""Rich progress bars on stderr for the core ``Progress`` callback (stdout carries results and JSON)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from clap_edge.core.progress import Progress, silent


@contextlib.contextmanager
def progress_bar(enabled: bool = True, transient: bool = True) -> Iterator[Progress]:
    """A ``Progress`` callback drawing one bar per task name; ``silent`` when not ``enabled``."""
    if not enabled:
        yield silent
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    with Bars(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
              console=Console(stderr=True), transient=transient) as bars:

        def report(task: str, advance: float = 1, total: float | None = None) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            elif total is not None:
                bars.update(tasks[task], total=total)
            bars.advance(tasks[task], advance)

        yield report


def note(message: str, enabled: bool = True) -> None:
    """One line on stderr before a step that takes seconds with nothing to count (loading a model)."""
    if enabled:
        import click

        click.echo(message, err=True)


__all__ = ["progress_bar", "note"]
