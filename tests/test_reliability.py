"""docs/reliability.md's table is what the corpus (tests/reliability_corpus.py) produces, run here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import reliability_corpus

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- corpus-table -->\n(.*?)\n<!-- /corpus-table -->", text, re.S)
    assert m, f"{DOC} has no <!-- corpus-table --> block"
    return m.group(1).strip()


@pytest.mark.slow
def test_reliability_table_matches_the_corpus(runtime_bundle, tiny_bundle, tmp_path):
    pytest.importorskip("torch")  # the corrupt-heads kind loads heads with torch
    results = reliability_corpus.run_corpus(runtime_bundle, tiny_bundle, tmp_path)
    failures = {kind: {k: n for k, n in c.items() if k.startswith("FAIL")} for kind, c in results.items()}
    assert not any(failures.values()), failures
    table = reliability_corpus.table(results)
    assert table == _doc_table(), f"docs/reliability.md is out of date; the corpus gives:\n{table}"


def test_every_kind_is_described_in_the_doc():
    text = DOC.read_text(encoding="utf-8")
    for kind in reliability_corpus.KINDS:
        assert f"**{kind}**" in text, kind
