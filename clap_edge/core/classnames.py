"""Class names are compared after Unicode NFC normalisation: 'café' typed two ways is one class."""

from __future__ import annotations

import unicodedata
from typing import Iterable

__all__ = ["nfc_key", "nfc_duplicate", "describe_duplicate"]


def nfc_key(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def nfc_duplicate(names: Iterable[str]) -> tuple[str, str] | None:
    """The first (earlier spelling, later spelling) pair equal after NFC, or None if all differ."""
    seen: dict[str, str] = {}
    for name in names:
        key = nfc_key(name)
        if key in seen:
            return seen[key], name
        seen[key] = name
    return None


def describe_duplicate(first: str, second: str) -> str:
    """'appears twice' or 'appears as 'caf\\xe9' and 'cafe\\u0301', equal after Unicode NFC' (both spellings)."""
    if first == second:
        return f"{second!r} appears twice"
    return f"{second!r} appears as {ascii(first)} and {ascii(second)}, equal after Unicode NFC"


def format_template(template: str, class_name: str) -> str:
    """Fill a template: ``{c}`` (ours) or ``{}`` (open_clip's) stands for the class name."""
    from clap_edge.core.errors import PromptError

    if "{c}" in template:
        return template.replace("{c}", class_name)
    if "{}" in template:
        return template.replace("{}", class_name)
    raise PromptError(f"template {template!r} has no '{{c}}' placeholder for the class name")
