"""`auto`'s engine decision, native vs Python, on every conformance bundle and on engine bundles made here.

Usage: python tests/cpp/engine_choice_check.py CONFORMANCE_OUT ENGINE_CHOICE_EXE   (exit 1 on any disagreement)

CONFORMANCE_OUT: the materialised cases (tests/conformance/materialize.py). Besides every case's bundle it
builds, on the base bundle, TensorRT engines with true digests (one that fits an H100 with TensorRT 10.3.0 at
fp16, a stale one, a swapped one) and an AOTInductor one for the same GPU. For each bundle, GPU (H100 / L4),
TensorRT version (10.3.0 / 10.3.0+cuda12 / 10.3.1) and precision (fp16 / fp32 / int8), Python's verdict is
export.bundle.engines.select_engine (tensorrt when it returns an engine; openvino when it raises
EngineMismatchError; refused when Bundle.open refuses the bundle) and the native one is engine_choice's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "conformance"))
HOSTS = {"NVIDIA H100 80GB HBM3": "9.0", "NVIDIA L4": "8.9"}
VERSIONS = ("10.3.0", "10.3.0+cuda12", "10.3.1")
PRECISIONS = ("fp16", "fp32", "int8")


def _sidecar(kind: str, file: str, source_sha: str, engine_sha: str) -> str:
    return json.dumps({"engine": kind, "file": file, "precision": "fp16", "batch": [1, 8, 32],
                       "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                  "arch": None, "isa": None},
                       "library": "tensorrt" if kind == "tensorrt" else "torch", "library_version": "10.3.0",
                       "source_model": "model.onnx", "source_sha256": source_sha, "engine_sha256": engine_sha})


def engine_bundles(out: Path) -> list[Path]:
    """The base bundle with one engine each: fits (H100, 10.3.0, fp16), stale, swapped, AOTInductor."""
    from materialize import Case

    base = out / "_base" / "bundle"
    model_sha = hashlib.sha256((base / "model.onnx").read_bytes()).hexdigest()
    made = []
    for name in ("fits", "stale", "swapped", "aoti"):
        bundle = out / "_engine_choice" / name / "bundle"
        shutil.rmtree(bundle.parent, ignore_errors=True)
        shutil.copytree(base, bundle)
        case = Case(bundle)
        plan = b"a TensorRT plan " + name.encode()
        engine_sha = hashlib.sha256(plan).hexdigest()
        kind = "aoti" if name == "aoti" else "tensorrt"
        file = "engines/e.pt2" if kind == "aoti" else "engines/e.plan"
        case.apply({"op": "write", "file": file, "hex": plan.hex()})
        case.apply({"op": "write", "file": "engines/e.json", "text": _sidecar(
            kind, file, "ab" * 32 if name == "stale" else model_sha, "cd" * 32 if name == "swapped" else engine_sha)})
        case.apply({"op": "set", "path": "engines", "value": [
            {"file": file, "engine": kind, "precision": "fp16", "sidecar": "engines/e.json"}]})
        case.finish()
        made.append(bundle)
    return made


def python_choices(bundle: Path, queries: list[tuple[str, str, str]]) -> list[str]:
    from clap_edge.core.errors import ClapEdgeError
    from clap_edge.export.bundle.engines import DeviceInfo, EngineMismatchError, select_engine
    from clap_edge.export.bundle.reader import Bundle

    try:
        b = Bundle.open(bundle)
    except ClapEdgeError:
        return ["refused"] * len(queries)
    out = []
    for gpu, version, precision in queries:
        try:
            select_engine(b, "tensorrt", precision, [DeviceInfo("cuda", gpu, HOSTS[gpu])], version)
            out.append("tensorrt")
        except (EngineMismatchError, ClapEdgeError):  # no engine fits / an unreadable sidecar: OpenVINO runs
            out.append("openvino")
    return out


def main(argv: list[str]) -> int:
    out, exe = Path(argv[1]), argv[2]
    bundles = sorted({p.parent for p in out.glob("*/*/bundle/manifest.json")}) + engine_bundles(out)
    queries = list(itertools.product(HOSTS, VERSIONS, PRECISIONS))
    bad, runs, chose_trt = [], 0, 0
    for bundle in bundles:
        lines = subprocess.run([exe, bundle, *("|".join(q) for q in queries)], capture_output=True, text=True,
                               errors="replace", timeout=120).stdout.splitlines()
        native = ["refused"] * len(queries) if lines and lines[0].startswith("refused: ") else lines
        python = python_choices(bundle, queries)
        runs += len(queries)
        chose_trt += python.count("tensorrt")
        for q, p, n in itertools.zip_longest(queries, python, native):
            if p != n:
                bad.append(f"{bundle.parent.name} {q}: python {p}, native {n}")
    print(f"engine_choice: {len(bundles)} bundles, {runs} decisions ({chose_trt} tensorrt), {len(bad)} disagree")
    print("\n".join(bad))
    return 1 if bad or chose_trt == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
