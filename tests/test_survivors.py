"""Assertions that kill the planted bugs issue 17 found surviving the suite: *which* calibration images,
a tar's running size total, *which* model the int8 GEMM ceiling runs, an engine whose source model is gone.

Each test checks identity (which files, which model, which engine), not only a count or a range."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import Bundle, TarLimits

PREPROCESS = {"size": [8, 8], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear",
              "resize_mode": "squash"}


# ---- which calibration images ----------------------------------------------------------------


def _grey_images(folder: Path, n: int) -> list[Path]:
    """``n`` flat grey PNGs in two class folders; image i has grey level 10 * i (so a batch row names its file)."""
    paths = []
    for i in range(n):
        path = folder / ("a" if i < n // 2 else "b") / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 9), (10 * i,) * 3).save(path)
        paths.append(path)
    return sorted(paths)


def _levels(batch: np.ndarray) -> list[int]:
    """The grey level (0-255) of each preprocessed row (mean 0, std 1: the pixel / 255)."""
    return [int(round(float(row.mean()) * 255)) for row in batch]


def test_calibration_picks_evenly_spaced_files_in_sorted_order(tmp_path):
    """7 files, 3 wanted: the 1st, 4th and 7th of the sorted walk, in that order (every class folder contributes)."""
    from clap_edge.export.builders.calibration import calibration_images

    _grey_images(tmp_path, 7)
    batch = calibration_images(tmp_path, PREPROCESS, count=3)
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == np.float32
    assert _levels(batch) == [0, 30, 60]
    assert _levels(calibration_images(tmp_path, PREPROCESS, count=4)) == [0, 20, 40, 60]
    # more wanted than there are: every file once, in order (no repeats)
    assert _levels(calibration_images(tmp_path, PREPROCESS, count=50)) == [0, 10, 20, 30, 40, 50, 60]
    assert _levels(calibration_images(tmp_path, PREPROCESS, count=1)) == [0]


def test_calibration_rows_are_the_runtime_preprocessing_of_those_files(tmp_path):
    from clap_edge.core.images import load_image
    from clap_edge.core.preprocess import PreprocessConfig, Preprocessor
    from clap_edge.export.builders.calibration import calibration_images

    paths = _grey_images(tmp_path, 5)
    pre = Preprocessor(PreprocessConfig.from_dict(PREPROCESS))
    expected = np.stack([pre(load_image(paths[i])) for i in (0, 2, 4)])
    np.testing.assert_array_equal(calibration_images(tmp_path, PREPROCESS, count=3), expected)


# ---- a tar's running size total -----------------------------------------------------------------


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tar_total_is_summed_over_members_not_checked_per_member(tmp_path):
    """Three members of 600 bytes, each under a 1,000-byte total limit, together 1,800: refused."""
    tar = _tar(tmp_path / "parts.tar", [(f"part{i}", bytes(600)) for i in range(3)])
    with pytest.raises(BundleError, match=r"parts\.tar: bundle tar unpacks to more than 1,000 bytes"):
        Bundle.open(tar, tar_limits=TarLimits(max_bytes=1000))
    # the same members under a limit they fit pass the bound (and fail later, for want of a manifest)
    with pytest.raises(BundleError) as e:
        Bundle.open(tar, tar_limits=TarLimits(max_bytes=1800))
    assert "unpacks to" not in str(e.value)


def test_tar_ratio_uses_the_running_total(tmp_path):
    """Many small zero-filled members compress well together: the ratio bound sees their sum."""
    tar = tmp_path / "many.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        for i in range(8):
            info = tarfile.TarInfo(f"z{i}")
            info.size = 200_000
            out.addfile(info, io.BytesIO(bytes(info.size)))
    limits = TarLimits(ratio_floor=300_000, max_ratio=50.0)  # each member is under the floor, their sum is not
    with pytest.raises(BundleError, match=r"unpacks to over 50x its size"):
        Bundle.open(tar, tar_limits=limits)


def test_tar_member_count_is_exact(tmp_path):
    """20 members pass a 20-member limit (and fail later for want of a manifest); 21 do not."""
    with pytest.raises(BundleError) as e:
        Bundle.open(_tar(tmp_path / "twenty.tar", [(f"f{i}", b"") for i in range(20)]),
                    tar_limits=TarLimits(max_members=20))
    assert "members" not in str(e.value)
    with pytest.raises(BundleError, match="more than 20 members"):
        Bundle.open(_tar(tmp_path / "more.tar", [(f"f{i}", b"") for i in range(21)]),
                    tar_limits=TarLimits(max_members=20))


# ---- which model the int8 ceiling runs ---------------------------------------------------------


def _ops(path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_int8_ceilings_run_the_int8_models_not_fp32(monkeypatch, tmp_path):
    """Each ceiling key times the model of its precision: fp32 a float MatMul, int8 the dynamic
    quantised one (MatMulInteger), int8-static and openvino:int8 the QDQ one."""
    pytest.importorskip("onnx")
    from clap_edge.apps import ceiling

    seen: dict[str, list[str]] = {}

    def fake_ort(path, a, threads):
        seen.setdefault("ort", []).append(Path(path).name)
        return lambda: None

    def fake_ov(path, a, threads, precision):
        seen.setdefault(f"ov:{precision}", []).append(Path(path).name)
        return lambda: None

    models: dict[str, Path] = {}
    real_models = ceiling._onnx_models

    def record_models(tmp, a, w):
        models.update(real_models(tmp, a, w))
        return models

    monkeypatch.setattr(ceiling, "ort_runner", fake_ort)
    monkeypatch.setattr(ceiling, "openvino_runner", fake_ov)
    monkeypatch.setattr(ceiling, "_onnx_models", record_models)
    cfg = ceiling.CeilingConfig(threads=1, shape=(8, 16, 8), libraries=("onnxruntime", "openvino"))
    ops_by_key: dict[str, list[str]] = {}
    runs, out = ceiling.build_runs(cfg, tmp_path)
    assert {"onnxruntime:fp32", "onnxruntime:int8", "onnxruntime:int8-static"} <= set(runs), out["errors"]
    # the ORT runs were built in plan order: fp32, int8 (dynamic), int8-static (QDQ)
    for key, name in zip(("onnxruntime:fp32", "onnxruntime:int8", "onnxruntime:int8-static"), seen["ort"]):
        ops_by_key[key] = _ops(tmp_path / name)
    assert "MatMul" in ops_by_key["onnxruntime:fp32"] and "MatMulInteger" not in ops_by_key["onnxruntime:fp32"]
    assert "QuantizeLinear" not in ops_by_key["onnxruntime:fp32"]
    assert "MatMulInteger" in ops_by_key["onnxruntime:int8"]  # dynamic int8: integer GEMM kernels
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops_by_key["onnxruntime:int8-static"])
    assert seen["ort"] == [models["fp32"].name, models["dynamic"].name, models["qdq"].name]
    if "ov:f32" in seen:  # openvino installed: fp32 reads the float model, int8 the QDQ one at f32 hint
        assert seen["ov:fp32"] == [models["fp32"].name]
        assert seen["ov:f32"] == [models["qdq"].name]
        assert {"QuantizeLinear", "DequantizeLinear"} <= set(_ops(tmp_path / seen["ov:f32"][0]))


# ---- an engine whose source model is gone -----------------------------------------------------


@pytest.fixture()
def orphan_engine_bundle(runtime_bundle, tmp_path):
    """A copy of the tiny bundle with one placeholder TensorRT engine whose sidecar names model.qdq.onnx,
    a source model this bundle does not hold."""
    import hashlib

    from clap_edge.export.bundle.engines import DeviceInfo, EngineSidecar, engine_basename
    from clap_edge.export.bundle.writer import add_to_bundle

    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    assert Bundle.open(root).manifest.sha256("model.qdq.onnx") is None
    gpu = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", compute_capability="9.0")
    base = engine_basename("tensorrt", gpu, "int8", (1, 8, 64))
    plan = b"plan"
    sidecar = EngineSidecar(engine="tensorrt", file=base + ".plan", precision="int8", batch=(1, 8, 64), device=gpu,
                            library="tensorrt", library_version="10.8.0", source_model="model.qdq.onnx",
                            source_sha256="0" * 64, engine_sha256=hashlib.sha256(plan).hexdigest(),
                            built_utc="2026-01-01T00:00:00Z", build_seconds=1.0, parity={})
    add_to_bundle(root, {sidecar.file: plan, base + ".json": json.dumps(sidecar.to_json()).encode()},
                  engines=[sidecar.manifest_entry(base + ".json")])
    return root, gpu


def test_engine_whose_source_model_is_gone_is_refused_by_selection(orphan_engine_bundle):
    from clap_edge.export.bundle.engines import EngineMismatchError, select_engine
    from clap_edge.runtime.backends.tensorrt.runner import TensorRTRunner

    root, gpu = orphan_engine_bundle
    bundle = Bundle.open(root)
    with pytest.raises(EngineMismatchError, match=r"built from model\.qdq\.onnx, which this bundle no longer lists"):
        select_engine(bundle, "tensorrt", "int8", [gpu], "10.8.0")
    # the backend does not claim it either (auto would otherwise pick it)
    assert not _supports_on(TensorRTRunner, bundle, gpu, "10.8.0")


def _supports_on(runner_cls, bundle, host, version) -> bool:
    class Here(runner_cls):
        @classmethod
        def candidate_hosts(cls):
            return [host]

        @classmethod
        def library_version(cls):
            return version

    return Here.supports(bundle, "int8")


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/clap-edge-absolute-escape.txt", "link"])
def test_tar_members_that_leave_the_bundle_are_refused(tmp_path, member):
    """Unpacking uses tarfile's "data" filter: '..' and links pointing out are refused; an absolute name is
    unpacked inside the staging folder (its leading '/' dropped), never at that path."""
    tar = tmp_path / "evil.tar"
    with tarfile.open(tar, "w") as out:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
            out.addfile(info)
        else:
            info.size = 4
            out.addfile(info, io.BytesIO(b"evil"))
    refused = r"cannot unpack bundle tar \(" if not member.startswith("/") else "missing file 'manifest.json'"
    with pytest.raises(BundleError, match=rf"evil\.tar: {refused}"):
        Bundle.open(tar)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/clap-edge-absolute-escape.txt").exists()
