"""The progress callback library code reports through; the apps draw it (rich lives only in apps).

A library function takes ``progress: Progress | None`` and calls ``progress(task, advance, total)``:
``task`` names a row ("encoding texts"), ``advance`` is how much was done since the last call, and
``total`` (given on any call, usually the first) is how much that task will do, ``None`` if unknown.
``clap_edge.apps.progress.progress_bar`` turns these calls into rich bars on stderr.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, task: str, advance: float = 1, total: float | None = None) -> None: ...


def silent(task: str, advance: float = 1, total: float | None = None) -> None:
    """A Progress that reports nothing."""


def or_silent(progress: Progress | None | bool) -> Progress:
    """``progress`` itself, or ``silent`` for None/False (configs that predate the callback pass False)."""
    return progress if callable(progress) else silent


__all__ = ["Progress", "silent", "or_silent"]
