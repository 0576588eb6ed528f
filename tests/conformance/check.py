"""Run one materialised case through a CLI and compare with its expectation (shared by pytest and CTest).

``run_case(case, runtime, tool)`` runs ``clap-edge classify`` (runtime "python", pinned to ONNX Runtime
fp32) or the native ``clap-edge-classify`` (runtime "native", ``--precision fp32``) and returns a
:class:`Outcome`; ``problems(case, outcome)`` lists how it differs from the case's expectation
(empty: the case passes). ``manifest_verdicts(case)`` gives Manifest.from_dict's and the JSON
Schema's verdicts on the case's manifest.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCORE_TOL = 1e-4
TIMEOUT_S = 120  # a hang is a failure, not a stuck suite
PYTHON_CLI = [sys.executable, "-c", "import sys; from clap_edge.apps.cli import main; sys.argv[0] = 'clap-edge'; main()"]


@dataclass
class Outcome:
    exit: int
    stdout: str
    stderr: str
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # image path -> JSON record

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def command(case: dict[str, Any], runtime: str, tool: str | os.PathLike | None = None) -> list[str]:
    args = [case["bundle"], *case["images"], "--json", "--top-k", str(case["top_k"])]
    if runtime == "python":
        return [*PYTHON_CLI, "classify", *args, "--backend", "onnxruntime", "--precision", "fp32"]
    return [str(tool), *args, "--precision", "fp32"]


def run_case(case: dict[str, Any], runtime: str, tool: str | os.PathLike | None = None,
             text_mode: bool = False) -> Outcome:
    cmd = command(case, runtime, tool)
    if text_mode:
        cmd.remove("--json")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, errors="replace")
    except subprocess.TimeoutExpired:
        return Outcome(-999, "", f"TIMEOUT after {TIMEOUT_S}s (a hang)")
    out = Outcome(p.returncode, p.stdout, p.stderr)
    for line in p.stdout.splitlines():
        try:
            rec = json.loads(line)
            out.records[rec["path"]] = rec
        except (ValueError, KeyError, TypeError):
            pass
    return out


def problems(case: dict[str, Any], o: Outcome) -> list[str]:
    """What is wrong with outcome `o` for `case` (empty list: as expected)."""
    want = case["expect"]
    bad = []
    if want["verdict"] == "per_image":  # image / folder / geometry cases (image_cases.py)
        import image_cases

        bad = image_cases.problems(case, o)
    if o.exit != want["exit"]:
        bad.append(f"exit {o.exit}, expected {want['exit']} (stderr: {o.stderr.strip()[-300:]!r})")
    if "Traceback" in o.stderr or o.exit < 0:
        bad.append(f"crash or traceback: exit {o.exit}, stderr {o.stderr.strip()[-300:]!r}")
    if want["verdict"] == "refused":
        last = o.last_line
        if not last.startswith("error: "):
            bad.append(f"last stderr line is not one 'error: ...' line: {last!r}")
        for s in want.get("message", []):
            if s not in last:
                bad.append(f"message {last!r} does not contain {s!r}")
        if o.records:
            bad.append(f"refused but printed {len(o.records)} records")
        return bad
    if want["verdict"] == "per_image":
        return bad
    for image, exp in want["outputs"].items():
        rec = o.records.get(image)
        if rec is None or "labels" not in rec:
            bad.append(f"{image}: no result ({rec})")
            continue
        if rec["labels"] != exp["labels"]:
            bad.append(f"{image}: labels {rec['labels']} != expected {exp['labels']}")
        diff = max((abs(a - b) for a, b in zip(rec["scores"], exp["scores"])), default=0.0)
        if len(rec["scores"]) != len(exp["scores"]) or diff > SCORE_TOL:
            bad.append(f"{image}: scores {rec['scores']} differ from the reference {exp['scores']} (max {diff:.2e})")
    return bad


def manifest_verdicts(case: dict[str, Any]) -> tuple[str, str]:
    """('accepted'|'refused: ...', same) from Manifest.from_dict (via the strict loader) and the JSON Schema."""
    import jsonschema

    from clap_edge.export.bundle.manifest import Manifest, ManifestFieldError, loads

    raw = (Path(case["bundle"]) / "manifest.json").read_bytes()
    try:
        Manifest.from_dict(loads(raw))
        py = "accepted"
    except ManifestFieldError as e:
        py = f"refused: {e}"
    schema = json.loads((Path(__import__("clap_edge.export.bundle", fromlist=["x"]).__file__).parent
                         / "manifest.schema.json").read_text())
    try:
        data = json.loads(raw)  # the schema judges the JSON text: text that does not parse is refused by any reader
    except ValueError as e:
        return py, f"refused: not JSON ({str(e)[:80]})"
    try:
        jsonschema.validate(data, schema, format_checker=jsonschema.FormatChecker())
        return py, "accepted"
    except jsonschema.ValidationError as e:
        return py, f"refused: {e.message[:160]}"
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a huge int the validator cannot compare
        return py, f"refused: {type(e).__name__}"


def text_problems(case: dict[str, Any], stdout: str) -> list[str]:
    import image_cases

    return image_cases.text_problems(case, stdout)


def load_cases(out: Path) -> list[dict[str, Any]]:
    ids = json.loads((out / "cases.json").read_text())
    return [json.loads((out / cid / "case.json").read_text()) for cid in ids]


def main(argv: list[str]) -> int:
    """CTest entry: python check.py OUT NATIVE_TOOL -> runs every native case, prints failures, exit 1 if any."""
    out, tool = Path(argv[0]), argv[1]
    cases = [c for c in load_cases(out) if "native" in c["runtimes"]]
    failed = 0
    for case in cases:
        bad = problems(case, run_case(case, "native", tool))
        if case["expect"].get("text"):
            bad += text_problems(case, run_case(case, "native", tool, text_mode=True).stdout)
        if bad:
            failed += 1
            print(f"FAIL {case['id']}: " + "; ".join(bad))
    print(f"native conformance: {len(cases)} cases, {len(cases) - failed} pass, {failed} fail")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1:]))
