"""The native C++ tools against the Python runtime on the same bundle and images.

A session fixture configures and builds the C++ runtime (cmake + ninja, into a temporary build dir) when
cmake, a compiler, ninja and the openvino wheel's CMake package are present, so CI (which runs pytest
before the CTest step) really compares the two runtimes; where they are missing the tests skip saying why.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "import sys; from clap_edge.apps.cli import main; sys.argv[0] = \"clap-edge\"; main()"]


def _openvino_cmake_dir() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    d = Path(openvino.__file__).parent / "cmake"
    return str(d) if (d / "OpenVINOConfig.cmake").is_file() else None


def _missing_tools() -> list[str]:
    missing = [t for t in ("cmake", "ninja", "c++") if shutil.which(t) is None]
    if _openvino_cmake_dir() is None:
        missing.append("openvino wheel with cmake/OpenVINOConfig.cmake")
    for header in ("/usr/include/nlohmann/json.hpp", "/usr/include/jpeglib.h", "/usr/include/png.h"):
        if not Path(header).exists():
            missing.append(header)
    return missing


@pytest.fixture(scope="session")
def native_tools(tmp_path_factory) -> dict[str, Path]:
    """Build clap-edge-classify / clap-edge-bench once per session (tools only, no GoogleTest needed).

    CLAP_EDGE_NATIVE_BUILD=<cmake build dir> uses the tools already built there instead.
    """
    prebuilt = os.environ.get("CLAP_EDGE_NATIVE_BUILD")
    if prebuilt:
        tools = {name: Path(prebuilt) / "runtime" / "cpp" / name for name in ("clap-edge-classify", "clap-edge-bench")}
        assert all(p.is_file() for p in tools.values()), f"CLAP_EDGE_NATIVE_BUILD={prebuilt} has no built tools"
        return tools
    missing = _missing_tools()
    if missing:
        pytest.skip(f"cannot build the native runtime here: missing {', '.join(missing)}")
    build = tmp_path_factory.mktemp("native-build")
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DOpenVINO_DIR={_openvino_cmake_dir()}", "-DCLAP_EDGE_BUILD_TESTS=OFF"]
    for cmd in (configure, ["ninja", "-C", str(build), "-j2", "clap-edge-classify", "clap-edge-bench"]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    tools = {name: build / "runtime" / "cpp" / name for name in ("clap-edge-classify", "clap-edge-bench")}
    assert all(p.is_file() for p in tools.values())
    return tools


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Odd images the two runtimes must agree on, plus one broken file."""
    sys.path.insert(0, str(ROOT / "tests" / "cpp"))
    from make_fixtures import make_images  # the CTest fixture generator: one set of odd images

    out = tmp_path_factory.mktemp("native-images")
    make_images(out)
    (out / "zz_truncated.jpg").write_bytes((out / "rgb_333x251.jpg").read_bytes()[:2000])
    return out


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600, **kw)


def test_native_classify_agrees_with_python_runtime(native_tools, runtime_bundle, images):
    native = _run([native_tools["clap-edge-classify"], runtime_bundle, images, "--json", "--top-k", "5",
                   "--precision", "fp32", "--batch-size", "8"])
    python = _run([*CLI, "classify", runtime_bundle, images, "--json",
                   "--top-k", "5", "--backend", "onnxruntime", "--batch-size", "8"])
    # same exit code (1: one broken image), same records in the same order, same error record
    assert native.returncode == python.returncode == 1, native.stderr + python.stderr
    n_lines = [json.loads(line) for line in native.stdout.splitlines()]
    p_lines = [json.loads(line) for line in python.stdout.splitlines()]
    assert [r["path"] for r in n_lines] == [r["path"] for r in p_lines]
    assert len(n_lines) == len(list(images.iterdir()))
    for n, p in zip(n_lines, p_lines):
        if "error" in p:
            assert "error" in n and "truncated" in n["error"] and "truncated" in p["error"]
            continue
        assert n["labels"][0] == p["labels"][0], (n, p)
        assert set(n["labels"]) == set(p["labels"])
        score_n = dict(zip(n["labels"], n["scores"]))
        for label, score in zip(p["labels"], p["scores"]):
            assert abs(score_n[label] - score) < 2e-3, (n["path"], label, score_n[label], score)
    assert native.stderr.strip().splitlines()[-1] == python.stderr.strip().splitlines()[-1] == \
        f"1 of {len(n_lines)} images could not be classified"


def test_native_classify_text_output_and_bad_bundle(native_tools, runtime_bundle, images, tmp_path):
    one = images / "rgb_97x131.png"
    native = _run([native_tools["clap-edge-classify"], runtime_bundle, one, "--top-k", "2", "--precision", "fp32"])
    python = _run([*CLI, "classify", runtime_bundle, one, "--top-k", "2",
                   "--backend", "onnxruntime"])
    assert native.returncode == python.returncode == 0
    assert native.stdout == python.stdout  # "path\tlabel 0.123, label 0.045"
    # a tampered bundle: one line naming the file, exit 2
    tampered = tmp_path / "tampered"
    shutil.copytree(runtime_bundle, tampered)
    with open(tampered / "model.onnx", "r+b") as f:
        f.seek(-5, 2)
        f.write(b"xxxxx")
    bad = _run([native_tools["clap-edge-classify"], tampered, one])
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "'model.onnx' is corrupt or was modified" in bad.stderr


def test_native_bench_rows_have_the_python_bench_fields(native_tools, runtime_bundle, images):
    out = _run([native_tools["clap-edge-bench"], runtime_bundle, "--batch-sizes", "1,4", "--iters", "3",
                "--warmup", "1", "--end-to-end", images, "--json"])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    model = [r for r in report["results"] if r["mode"] == "model"]
    e2e = [r for r in report["results"] if r["mode"] == "end_to_end"]
    assert [r["batch_size"] for r in model] == [1, 4] and [r["batch_size"] for r in e2e] == [1, 4]
    for row in model:
        for key in ("backend", "batch_size", "threads", "precision", "p50_ms", "p90_ms", "p99_ms", "images_per_s"):
            assert key in row
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    for row in e2e:
        assert row["failed"] > 0  # the broken file is counted, the rest classified
        assert row["images_per_s"] > 0 and row["fraction_of_model_only"] > 0
        # paired: the same batches through the model alone, and the CPU time of both
        assert row["n_images"] == 3 * row["batch_size"] and row["model_ms_per_batch"] > 0
        assert row["cpu_ms_per_batch"] > 0 and row["model_cpu_ms_per_batch"] >= 0
    assert report["env"]["cpu_model"]


def test_native_and_python_agree_on_every_conformance_case(native_tools, tmp_path_factory):
    """tests/conformance/: both CLIs give the same verdict, exit code, top-k labels, scores (1e-4, fp32) and
    error line on every case both run (each also meets the case's own expectation)."""
    sys.path.insert(0, str(ROOT / "tests" / "conformance"))
    import check
    import materialize

    out = Path(os.environ.get("CLAP_EDGE_CONFORMANCE_OUT") or tmp_path_factory.mktemp("conformance"))
    cases = [c for c in materialize.materialize(out) if set(c["runtimes"]) >= {"python", "native"}]
    disagree = []
    for case in cases:
        py, nat = check.run_case(case, "python"), check.run_case(case, "native", native_tools["clap-edge-classify"])
        why = [f"python: {p}" for p in check.problems(case, py)] + [f"native: {p}" for p in check.problems(case, nat)]
        if py.exit != nat.exit:
            why.append(f"exit {py.exit} vs {nat.exit}")
        for image in case["images"]:
            p, n = py.records.get(image, {}), nat.records.get(image, {})
            if p.get("labels") != n.get("labels"):
                why.append(f"{image}: labels {p.get('labels')} vs {n.get('labels')}")
            elif p.get("scores") and max(abs(a - b) for a, b in zip(p["scores"], n["scores"])) > check.SCORE_TOL:
                why.append(f"{image}: scores {p['scores']} vs {n['scores']}")
        both_json_errors = all("not valid JSON (" in o.last_line for o in (py, nat))  # each parser's own words
        if case["expect"]["verdict"] == "refused" and py.last_line != nat.last_line and not (
                both_json_errors or case.get("error_line")):
            why.append(f"error lines differ:\n  python: {py.last_line}\n  native: {nat.last_line}")
        if why:
            disagree.append(f"{case['id']}: " + "; ".join(why))
    assert len(cases) >= 100
    assert not disagree, f"{len(disagree)} of {len(cases)} cases disagree:\n" + "\n".join(disagree)


# ---- the relocatable package (CPack tarball): runs with an empty environment, and a project links it ----

GLIBC_AND_COMPILER_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libstdc++.so.6",
                           "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "linux-vdso.so.1"}


@pytest.fixture(scope="module")
def package(native_tools, tmp_path_factory) -> Path:
    """`cpack` in the tools' build dir, the tarball unpacked into a fresh folder; returns the package root."""
    build = native_tools["clap-edge-classify"].parents[2]
    out = tmp_path_factory.mktemp("cpack")
    made = _run(["cpack", "-G", "TGZ", "-B", out], cwd=build)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    tarballs = list(out.glob("clap-edge-native-*-linux-*.tar.gz"))
    assert len(tarballs) == 1, list(out.iterdir())
    unpacked = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["tar", "xzf", tarballs[0], "-C", unpacked], check=True)
    (root,) = unpacked.iterdir()
    return root


def _elf_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
            and p.read_bytes()[:4] == b"\x7fELF"]


def test_package_libraries_resolve_inside_it(package):
    """Every ELF file's libraries resolve inside the package or to glibc / libstdc++ / libgcc, its RUNPATH
    is $ORIGIN-relative only (no path of the build machine or of a virtual environment), and it holds
    exactly the OpenVINO parts the CPU device loads."""
    elves = _elf_files(package)
    assert {p.name for p in (package / "bin").iterdir()} >= {"clap-edge-classify", "clap-edge-bench"}
    for elf in elves:
        ldd = subprocess.run(["ldd", elf], capture_output=True, text=True, env={})
        assert ldd.returncode == 0 and "not found" not in ldd.stdout, (elf, ldd.stdout)
        for line in ldd.stdout.splitlines():
            name, _, where = line.strip().partition(" => ")
            if "statically linked" in line or not where:
                assert name.split()[0].rsplit("/", 1)[-1] in GLIBC_AND_COMPILER_LIBS, (elf, line)
                continue
            path = where.split(" (")[0]
            assert path.startswith(str(package)) or name in GLIBC_AND_COMPILER_LIBS, (elf.name, line)
        dyn = subprocess.run(["readelf", "-d", elf], capture_output=True, text=True).stdout
        for entry in re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dyn):
            assert all(p.startswith("$ORIGIN") for p in entry.split(":")), (elf.name, entry)
    parts = sorted(re.sub(r"\.so.*", "", p.name) for p in (package / "lib").glob("libopenvino_*"))
    assert parts == ["libopenvino_intel_cpu_plugin", "libopenvino_ir_frontend", "libopenvino_onnx_frontend"], parts


def test_package_tools_run_with_an_empty_environment(package, runtime_bundle, images):
    """bin/clap-edge-classify under `env -i` (no PATH, no LD_LIBRARY_PATH, no virtual environment) gives the
    Python runtime's answers on the same bundle and images."""
    pngs = sorted(str(p) for p in images.glob("*.png"))
    native = subprocess.run(["env", "-i", package / "bin" / "clap-edge-classify", runtime_bundle, *pngs, "--json",
                             "--top-k", "3", "--precision", "fp32"], capture_output=True, text=True, timeout=300)
    python = _run([*CLI, "classify", runtime_bundle, *pngs, "--json", "--top-k", "3", "--backend", "onnxruntime"])
    assert native.returncode == python.returncode == 0, native.stderr + python.stderr
    n_lines = [json.loads(line) for line in native.stdout.splitlines()]
    p_lines = [json.loads(line) for line in python.stdout.splitlines()]
    assert [r["path"] for r in n_lines] == [r["path"] for r in p_lines] == pngs
    for n, p in zip(n_lines, p_lines):
        assert n["labels"] == p["labels"] and np.allclose(n["scores"], p["scores"], atol=2e-3), (n, p)
    help_ = subprocess.run(["env", "-i", package / "bin" / "clap-edge-bench", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "Usage: clap-edge-bench" in help_.stdout


def test_package_links_into_a_consumer_project(package, runtime_bundle, images, tmp_path):
    """A CMake project (tests/cpp/consumer: a C++ and a C program) finds the unpacked package with
    find_package(clap_edge), builds, and runs under `env -i` with the Python runtime's top label."""
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", ROOT / "tests" / "cpp" / "consumer", "-B", build, "-G", "Ninja",
                 "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_PREFIX_PATH={package}"],
                ["cmake", "--build", build, "-j2"]):
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "OpenVINO_DIR"})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    image = images / "rgb_97x131.png"
    python = _run([*CLI, "classify", runtime_bundle, image, "--json", "--top-k", "1", "--backend", "onnxruntime"])
    top = json.loads(python.stdout)["labels"][0]
    cpp = subprocess.run(["env", "-i", build / "consumer", runtime_bundle, image], capture_output=True, text=True)
    assert cpp.returncode == 0 and cpp.stdout == f"{top}\n", cpp.stdout + cpp.stderr
    c = subprocess.run(["env", "-i", build / "classify_c", runtime_bundle, image, image.with_name("nope.png")],
                       capture_output=True, text=True)
    assert c.returncode == 1, c.stdout + c.stderr  # one image classified, one missing
    assert f"{image}\t{top} " in c.stdout and "nope.png\terror 3: " in c.stdout, c.stdout


def test_native_applies_a_rewritten_class_matrix_and_bias(native_tools, runtime_bundle, images, tmp_path):
    """Schema 4: classes are data. A bundle whose classes were rewritten (new names, matrix and bias, as
    `clap-edge classes` / `adapt` write them) gives the same answers in C++ as in Python."""
    import numpy as np

    from clap_edge.export.bundle import rewrite_classes

    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    new = rewrite_classes(runtime_bundle, tmp_path / "rewritten", class_names=["forklift", "pallet", "Kätzchen", "🚜"],
                          class_matrix=w, bias=np.array([0.3, -0.2, 0.0, 0.1], np.float32),
                          provenance={"method": "linear-probe"})
    native = _run([native_tools["clap-edge-classify"], new, images, "--json", "--top-k", "4", "--precision", "fp32"])
    python = _run([*CLI, "classify", new, images, "--json", "--top-k", "4", "--backend", "onnxruntime"])
    assert native.returncode == python.returncode == 1, native.stderr + python.stderr
    for n, p in zip(*[[json.loads(x) for x in r.stdout.splitlines()] for r in (native, python)]):
        if "error" not in p:
            assert n["labels"] == p["labels"] and np.allclose(n["scores"], p["scores"], atol=1e-4), (n, p)


def test_native_answers_a_bundle_adapted_from_photos(native_tools, runtime_bundle, images, tmp_path):
    """`clap-edge adapt` (the linear probe's matrix and bias, from the bundle's own embeddings of a few
    photos) -> the C++ runtime gives the Python runtime's answers."""
    from clap_edge.runtime.adapt import AdaptConfig, adapt_bundle

    rng = np.random.default_rng(3)
    for name, tint in (("red box", (200, 40, 40)), ("green box", (40, 200, 40)), ("cat", (90, 90, 200))):
        (tmp_path / "shots" / name).mkdir(parents=True)
        for k in range(4):
            pixels = np.clip(rng.normal(tint, 40, size=(48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "shots" / name / f"{k}.png")
    report = adapt_bundle(runtime_bundle, tmp_path / "shots", tmp_path / "adapted", config=AdaptConfig(seed=1))
    assert report["bias"] and report["new_classes"] == ["green box", "red box"]
    native = _run([native_tools["clap-edge-classify"], report["out"], images, "--json", "--top-k", "3",
                   "--precision", "fp32"])
    python = _run([*CLI, "classify", report["out"], images, "--json", "--top-k", "3", "--backend", "onnxruntime"])
    assert native.returncode == python.returncode == 1, native.stderr + python.stderr
    for n, p in zip(*[[json.loads(x) for x in r.stdout.splitlines()] for r in (native, python)]):
        if "error" not in p:
            assert n["labels"] == p["labels"] and np.allclose(n["scores"], p["scores"], atol=1e-4), (n, p)
