"""The package as a user installs it: a built wheel, installed (not editable) into a fresh virtual environment
with the base dependencies only (the edge runtime: no torch, no open_clip, no onnx).

One venv per test session covers both the wheel test and the torch-free test: its ``clap-edge`` must
classify / inspect / bench a bundle exported in this (full) environment, and ``clap-edge train`` there must
exit 2 with one line naming the [train] extra. pip installs the base dependencies from the configured index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_architecture import SOURCES, modules

ROOT = Path(__file__).resolve().parents[1]
# Data files the package needs at run time: (folder in the repository, glob, installed folder)
DATA = [("clap_edge/model_configs", "*.json", "clap_edge/model_configs"),
        ("clap_edge/weights", "*.safetensors", "clap_edge/weights"),
        ("clap_edge/vocab", "*.toml", "clap_edge/vocab"),
        ("export/bundle", "*.json", "clap_edge/export/bundle")]


def _copy_source(dest: Path) -> Path:
    """The tracked kind of files only: no build outputs, caches, or the worktree's clap_edge/export links."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")

    def skip_links(folder, names):
        return set(ignore(folder, names)) | {n for n in names if os.path.islink(os.path.join(folder, n))}

    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, dest / folder, ignore=skip_links)
    return dest


def _run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = _copy_source(work / "src")
    # --no-build-isolation: build with this environment's setuptools (no index needed for the build itself)
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                 "-w", str(work / "dist"), str(src)])
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (work / "dist").glob("clap_edge-*.whl")
    return path


@pytest.fixture(scope="session")
def edge_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its base dependencies: the edge install."""
    venv = tmp_path_factory.mktemp("venv") / "edge"
    done = _run([sys.executable, "-m", "venv", str(venv)])
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    done = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _edge(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # only what is installed
    return _run([str(venv / "bin" / "clap-edge"), *args], env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_wheel_contains_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for name, mod in modules().items():
        path = name.replace(".", "/") + ("/__init__.py" if mod.is_package else ".py")
        expected.add(path)
    for folder, pattern, installed in DATA:
        found = sorted((ROOT / folder).glob(pattern))
        expected |= {f"{installed}/{p.name}" for p in found}
    assert {"clap_edge/apps/cli/__init__.py", "clap_edge/export/bundle/__init__.py",
            "clap_edge/runtime/backends/onnxruntime/runner.py", "clap_edge/weights/clap-edge-toy-toyworld.safetensors",
            "clap_edge/model_configs/clap-edge-tiny.json"} <= expected
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    assert not [n for n in names if n.startswith(("tests/", "export/", "runtime/"))], "stray top-level packages"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [r for r in requires if any(lib in r for lib in ("torch", "open_clip", "onnx>", "onnxscript"))], requires


@pytest.mark.slow
def test_edge_install_runs_the_runtime_without_torch(edge_venv, runtime_bundle, tmp_path):
    python = str(edge_venv / "bin" / "python")
    for lib in ("torch", "open_clip", "onnx", "torchvision"):  # the point: the base install has none of them
        assert _run([python, "-c", f"import {lib}"]).returncode != 0, f"{lib} is importable in the edge venv"

    done = _edge(edge_venv, "--help")
    assert done.returncode == 0 and "classify" in done.stdout, done.stderr

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    done = _edge(edge_venv, "classify", str(runtime_bundle), str(images), "--backend", "onnxruntime", "--json")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3 and all('"labels"' in line for line in lines), done.stdout

    done = _edge(edge_venv, "inspect", str(runtime_bundle))
    assert done.returncode == 0, done.stderr

    done = _edge(edge_venv, "bench", str(runtime_bundle), "--backends", "onnxruntime", "--batch-sizes", "1",
                 "--warmup", "0", "--iters", "2", "--json", str(tmp_path / "bench.json"), "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["backend"] for r in report["results"]] == ["onnxruntime"] and report["results"][0]["images_per_s"] > 0
    # the GEMM ceiling needs onnx to build its models: said in the report, not a failed bench
    assert "clap-edge[train]" in report["env"]["ceiling"]["error"]

    done = _edge(edge_venv, "train", "--model", "clap-edge-tiny", "--classes", "a,b", "--out",
                 str(tmp_path / "h.safetensors"))
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "[train]" in lines[0] and "pip install 'clap-edge[train]'" in lines[0], done.stderr

    # the demo says so before it writes its ~27 MB dataset, and leaves nothing behind (issue 22)
    done = _edge(edge_venv, "demo", "--out", str(tmp_path / "demo-out"))
    assert done.returncode == 2 and "[train]" in done.stderr and not (tmp_path / "demo-out").exists(), done.stderr
