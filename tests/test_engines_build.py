"""Real engine builds: AOTInductor on this CPU (slow: a C++ compile per engine), and the GPU builds
(AOTInductor on CUDA, TensorRT), which skip here with the reason."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.backends import RunnerOptions, available_backends, create_runner


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def _build(root, *args) -> dict:
    from clap_edge.apps.cli import main

    result = CliRunner().invoke(main, ["build-engine", str(root), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cpu_engines(runtime_bundle, tmp_path_factory):
    """A bundle copy with two CPU AOTInductor engines: fp32 for batch [1, 4] and bf16 for [1, 8]."""
    root = tmp_path_factory.mktemp("aoti") / "bundle"
    shutil.copytree(runtime_bundle, root)
    fp32 = _build(root, "--engine", "aoti", "--device", "cpu", "--batch", "1,2,4")
    bf16 = _build(root, "--engine", "aoti", "--device", "cpu", "--precision", "bf16", "--batch", "1,4,8")
    return root, fp32, bf16


@pytest.fixture(scope="module")
def images(runtime_bundle):
    calib = np.load(runtime_bundle / "calibration.npy")
    noise = np.random.default_rng(1).standard_normal((3, *calib.shape[1:])).astype(np.float32)
    return np.concatenate([calib, noise])  # 11 images: more than either engine's max batch


@pytest.mark.slow
def test_aoti_cpu_engines_are_stored_with_parity(cpu_engines):
    import torch

    root, fp32, bf16 = cpu_engines
    manifest = json.loads((root / "manifest.json").read_text())
    assert [e["precision"] for e in manifest["engines"]] == ["fp32", "bf16"]
    for sidecar in (fp32, bf16):
        assert sidecar["device"]["type"] == "cpu" and sidecar["library_version"] == torch.__version__
        assert sidecar["source_sha256"] == manifest["files"]["model.pt2"]["sha256"]
        assert sidecar["engine_sha256"] == hashlib.sha256((root / sidecar["file"]).read_bytes()).hexdigest()
        assert sidecar["parity"]["n_images"] == 8
        for name in (sidecar["file"], sidecar["file"].removesuffix(".pt2") + ".json"):
            assert manifest["files"][name]["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
    assert fp32["batch"] == [1, 2, 4] and fp32["file"].endswith("-fp32-b1-2-4.pt2")
    assert fp32["parity"]["max_abs_logit_diff_vs_onnxruntime"] < 1e-3
    assert fp32["parity"]["top1_agreement_vs_onnxruntime"] == 1.0
    assert bf16["parity"]["max_abs_logit_diff_vs_onnxruntime"] <= bf16["parity"]["tolerance"]
    assert set(Bundle.open(root).verify_all().values()) == {"ok"}


@pytest.mark.slow
def test_aoti_runner_matches_onnxruntime_and_chunks(cpu_engines, images):
    root, fp32, _ = cpu_engines
    bundle = Bundle.open(root)
    assert {"aoti", "aoti:bf16"} <= set(available_backends(bundle))
    with create_runner(bundle, "onnxruntime") as ort:
        reference = ort.infer(images)
    with create_runner(bundle, "aoti", RunnerOptions(threads=1)) as runner:
        out = runner.infer(images)  # 11 images through an engine of batch range [1, 4]: 4 + 4 + 3
        assert str(runner.choice.path).endswith(fp32["file"])
    assert np.abs(out.logits - reference.logits).max() < 1e-3
    assert np.abs(out.embedding - reference.embedding).max() < 1e-4
    with create_runner(bundle, "aoti:bf16") as runner:
        low = runner.infer(images)
        assert runner.precision == "bf16"
    assert np.abs(low.embedding - reference.embedding).max() < 5e-2  # unit-norm embeddings, bf16 mantissa


@pytest.mark.slow
def test_aoti_tampered_engine_is_refused(cpu_engines, tmp_path):
    root, fp32, _ = cpu_engines
    copy = tmp_path / "bundle"
    shutil.copytree(root, copy)
    engine = copy / fp32["file"]
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="is corrupt or was modified"):
        create_runner(Bundle.open(copy), "aoti").activate()


@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU here: AOTInductor CUDA engines are built and checked by "
                                        "bench/gpu/check.sh on a GPU machine")
def test_aoti_cuda_fp16(runtime_bundle, tmp_path, images):  # pragma: no cover - needs a GPU
    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    sidecar = _build(root, "--engine", "aoti", "--device", "cuda", "--precision", "fp16", "--batch", "1,8,16")
    assert sidecar["device"]["type"] == "cuda"
    with create_runner(Bundle.open(root), "aoti:fp16", RunnerOptions(device="cuda")) as runner:
        out = runner.infer(images)
    with create_runner(Bundle.open(root), "onnxruntime") as ort:
        assert np.abs(ort.infer(images).embedding - out.embedding).max() < 2e-2


@pytest.mark.skipif(not (_cuda() and _tensorrt()), reason="TensorRT engines need a CUDA GPU and the tensorrt "
                                                          "package (pip install 'clap-edge[gpu]' from NVIDIA's index)")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_build_and_run(runtime_bundle, tmp_path, images, precision):  # pragma: no cover - needs a GPU
    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    cache = tmp_path / "trt.cache"
    sidecar = _build(root, "--engine", "tensorrt", "--precision", precision, "--batch", "1,4,8",
                     "--timing-cache", str(cache))
    assert cache.is_file() and sidecar["library"] == "tensorrt"
    with create_runner(Bundle.open(root), f"tensorrt:{precision}", RunnerOptions(device="cuda")) as runner:
        out = runner.infer(images)  # 11 > max 8: two chunks
    with create_runner(Bundle.open(root), "onnxruntime") as ort:
        ref = ort.infer(images)
    assert np.abs(ref.embedding - out.embedding).max() < (1e-3 if precision == "fp32" else 2e-2)


@pytest.mark.slow
def test_classify_cli_with_aoti(cpu_engines, runtime_bundle, tmp_path):
    from PIL import Image

    from clap_edge.apps.cli import main

    root, _, _ = cpu_engines
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    outputs = {}
    for backend in ("aoti", "onnxruntime"):
        result = CliRunner().invoke(main, ["classify", str(root), str(tmp_path / "red.png"), "--backend", backend,
                                           "--device", "cpu", "--json", "--top-k", "2"])
        assert result.exit_code == 0, result.output
        outputs[backend] = json.loads(result.stdout.strip().splitlines()[-1])
    assert outputs["aoti"]["labels"] == outputs["onnxruntime"]["labels"]
    np.testing.assert_allclose(outputs["aoti"]["scores"], outputs["onnxruntime"]["scores"], atol=1e-4)
