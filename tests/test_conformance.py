"""The conformance suite (tests/conformance/) through `clap-edge classify`, Manifest.from_dict and the JSON Schema.

Every case is materialised once per session (tests/conformance/materialize.py) from one base bundle;
CLAP_EDGE_CONFORMANCE_OUT=<dir> keeps them (and the base bundle) there between runs.
The native runtime runs the same cases in CTest (tests/cpp/CMakeLists.txt) and test_native.py diffs the two.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "conformance"
sys.path.insert(0, str(HERE))
import check  # noqa: E402
import materialize  # noqa: E402

CASES = [materialize.case_id(p) for p in materialize.case_files()]
SPECS = {cid: json.loads((HERE / f"{cid}.json").read_text()) for cid in CASES}
MANIFEST_CASES = [cid for cid in CASES if SPECS[cid].get("schema", "agree" if cid.split("/")[-2] in
                                                          ("manifest", "sidecar") else None)]


@pytest.fixture(scope="session")
def conformance(tmp_path_factory) -> dict[str, dict]:
    out = Path(os.environ.get("CLAP_EDGE_CONFORMANCE_OUT") or tmp_path_factory.mktemp("conformance"))
    return {c["id"]: c for c in materialize.materialize(out)}


@pytest.mark.parametrize("cid", CASES)
def test_python_cli(conformance, cid):
    case = conformance[cid]
    if "python" not in case["runtimes"]:
        pytest.skip("native-only case")
    bad = check.problems(case, check.run_case(case, "python"))
    if case["expect"].get("text"):
        bad += check.text_problems(case, check.run_case(case, "python", text_mode=True).stdout)
    assert not bad, f"{cid}: " + "; ".join(bad)


@pytest.mark.parametrize("cid", MANIFEST_CASES)
def test_manifest_rules_and_schema_agree(conformance, cid):
    """Manifest.from_dict gives the case's verdict; the schema agrees, or is more lenient where marked."""
    case = conformance[cid]
    py, schema = check.manifest_verdicts(case)
    want = case["expect"]["verdict"]
    # bundle-level refusals (digest, file bytes) are outside the manifest rules: those cases say "accepted" here
    manifest_verdict = case.get("schema_manifest_verdict") or want
    assert py.split(":")[0] == manifest_verdict, f"Manifest.from_dict: {py}"
    mode = case.get("schema") or "agree"
    if mode == "lenient":  # a rule the schema language cannot state (cross-field, depth, NFC quick check ...)
        assert schema == "accepted", f"schema marked lenient but refuses: {schema}"
    else:
        assert schema.split(":")[0] == manifest_verdict, f"JSON Schema: {schema} (Python: {py})"


def test_holdout_set_is_present():
    holdout = [c for c in CASES if c.startswith("holdout/")]
    assert len(holdout) >= 10 and {c.split("/")[1] for c in holdout} >= {"manifest", "bundle"}
