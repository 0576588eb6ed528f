"""Rules for names and file names in a manifest, decided identically in Python, C++ and the JSON Schema.

A *name* (class names, templates, model and engine names, ...) is a non-empty string of at most
``name_chars`` code points with no Unicode control character (Cc: U+0000-U+001F, U+007F-U+009F), no
U+2028/U+2029, no (lone) surrogate, and whose Unicode NFC quick check answers YES: no code point
with NFC_Quick_Check No or Maybe, and canonical combining classes never decreasing between non-zero
classes. (Quick-check YES implies NFC; it also refuses a few NFC strings such as "q" + U+0303 that
could compose: write the precomposed form where one exists.) The decision uses committed tables
(``unicode_tables.py``, ``runtime/cpp/src/unicode_tables.hpp``, the schemas' ``name`` pattern) made
from one Unicode version by ``python -m clap_edge.export.bundle.textrules`` (regenerates all three),
so every reader decides the same whatever its own Unicode library.

A *file name* is a relative POSIX path: no empty, ``.`` or ``..`` part, no leading ``/``, no
backslash, no control character, U+2028/U+2029 or surrogate, at most 255 characters.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from pathlib import Path

from clap_edge.export.bundle import unicode_tables as T

_QC_STARTS = [r[0] for r in T.NFC_QC_NO_MAYBE]
_CCC_STARTS = [r[0] for r in T.CCC]


def _lookup(starts: list[int], table, cp: int):
    i = bisect.bisect_right(starts, cp) - 1
    return table[i] if i >= 0 and table[i][0] <= cp <= table[i][1] else None


def ccc(cp: int) -> int:
    r = _lookup(_CCC_STARTS, T.CCC, cp)
    return r[2] if r else 0


def bad_char(cp: int) -> str | None:
    """Why a code point may never appear in a name or file name (None: it may)."""
    if cp < 0x20 or 0x7F <= cp <= 0x9F:
        return f"a control character U+{cp:04X}"
    if cp in (0x2028, 0x2029):
        return f"U+{cp:04X} (a line/paragraph separator)"
    if 0xD800 <= cp <= 0xDFFF:
        return f"a lone surrogate U+{cp:04X} (not valid Unicode)"
    return None


def name_problem(s: str, max_chars: int) -> str | None:
    """None if `s` is a valid name, else the problem (one phrase)."""
    if not s:
        return "is empty"
    if len(s) > max_chars:
        return f"has {len(s)} characters, more than {max_chars}"
    last = 0
    for ch in s:
        cp = ord(ch)
        bad = bad_char(cp)
        if bad:
            return f"contains {bad}"
        c = ccc(cp)
        if (c and last > c) or _lookup(_QC_STARTS, T.NFC_QC_NO_MAYBE, cp):
            return (f"is not in Unicode NFC form (quick check: U+{cp:04X} at this place); "
                    "write it precomposed (NFC)")
        last = c
    return None


def escape_controls(s: str) -> str:
    """``s`` with its control characters escaped as repr() escapes them (quotes and backslashes left as they are).

    Field paths hold the manifest's own keys: a key with a newline must not make an error two lines. The C++ twin is
    ``escape_controls`` in runtime/cpp/src/manifest.cpp; both escape exactly C0, DEL..NBSP, soft hyphen, U+2028/9
    and surrogates.
    """
    return "".join(_ESCAPES.get(c) or _escape_one(c) for c in s)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(c: str) -> str:
    cp = ord(c)
    if cp < 0x20 or 0x7F <= cp <= 0xA0 or cp == 0xAD:
        return f"\\x{cp:02x}"
    if cp in (0x2028, 0x2029) or 0xD800 <= cp <= 0xDFFF:
        return f"\\u{cp:04x}"
    return c


def file_name_problem(name: str) -> str | None:
    if not name or len(name) > 255:
        return "must have 1..255 characters"
    if name.startswith("/"):
        return "is absolute"
    if "\\" in name:
        return "contains a backslash"
    for ch in name:
        bad = bad_char(ord(ch))
        if bad:
            return f"contains {bad}"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' part"
    return None


# ---- generation (run on a change of Unicode version or rule) ----------------------------------


def _tables() -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(NFC_QC No/Maybe ranges (lo, hi, 1=No 2=Maybe), non-zero ccc ranges (lo, hi, ccc)) from unicodedata."""
    import unicodedata

    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    no = {cp for cp in cps if unicodedata.normalize("NFC", chr(cp)) != chr(cp)}
    maybe = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V and T jamo
    for cp in cps:  # the second code point of every primary composite that NFC re-forms
        d = unicodedata.decomposition(chr(cp))
        parts = [int(x, 16) for x in d.split()] if d and not d.startswith("<") else []
        if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(cp):
            maybe.add(parts[1])
    qc = {**{cp: 2 for cp in maybe}, **{cp: 1 for cp in no}}
    return _ranges(qc), _ranges({cp: unicodedata.combining(chr(cp)) for cp in cps if unicodedata.combining(chr(cp))})


def _ranges(values: dict[int, int]) -> list[tuple[int, int, int]]:
    out: list[list[int]] = []
    for cp in sorted(values):
        if out and out[-1][1] == cp - 1 and out[-1][2] == values[cp]:
            out[-1][1] = cp
        else:
            out.append([cp, cp, values[cp]])
    return [tuple(r) for r in out]  # type: ignore[misc]


def name_pattern(qc: list[tuple[int, int, int]]) -> str:
    """The schema's name pattern: every code point except controls, separators, surrogates and QC No/Maybe."""
    def esc(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)

    parts = ["\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\ud800-\\udfff"]
    parts += [esc(lo) if lo == hi else f"{esc(lo)}-{esc(hi)}" for lo, hi, _ in qc]
    return "^[^" + "".join(parts) + "]+(?![\\s\\S])"  # not $: Python's $ also matches before a final newline


def generate(root: Path) -> None:
    import unicodedata

    qc, cc = _tables()
    py = root / "export" / "bundle" / "unicode_tables.py"
    py.write_text(
        f'"""Generated by textrules.py from Unicode {unicodedata.unidata_version}: NFC quick-check and combining-class '
        'ranges. Do not edit."""\n\n'
        f"UNICODE_VERSION = {unicodedata.unidata_version!r}\n"
        f"NFC_QC_NO_MAYBE = {qc!r}  # (lo, hi, 1=No 2=Maybe)\n"
        f"CCC = {cc!r}  # (lo, hi, canonical combining class)\n")
    rows = lambda t: ",\n".join(f"    {{0x{lo:X}, 0x{hi:X}, {v}}}" for lo, hi, v in t)  # noqa: E731
    (root / "runtime" / "cpp" / "src" / "unicode_tables.hpp").write_text(
        f"// Generated by export/bundle/textrules.py from Unicode {unicodedata.unidata_version}. Do not edit.\n"
        "#pragma once\n#include <cstdint>\n\nnamespace clap_edge::unicode {\n"
        "struct Range { uint32_t lo, hi; int value; };\n"
        f"inline constexpr Range kNfcQcNoMaybe[] = {{\n{rows(qc)}}};\n"
        f"inline constexpr Range kCombiningClass[] = {{\n{rows(cc)}}};\n}}  // namespace clap_edge::unicode\n")
    line = re.compile(r'("name": \{"type": "string", "minLength": 1, "maxLength": 1024)(, "pattern": "[^"]*")?\}')
    for schema in ("manifest.schema.json", "sidecar.schema.json"):  # both schemas' $defs.name
        schema_path = root / "export" / "bundle" / schema
        text = schema_path.read_text()  # replace only the name pattern (the files are hand-formatted)
        assert line.search(text), f"{schema}: $defs.name not found"
        schema_path.write_text(line.sub(lambda m: m.group(1) + ', "pattern": ' + json.dumps(name_pattern(qc)) + "}",
                                        text))

if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
