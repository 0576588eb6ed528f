"""ExecuTorch (.pte) and LiteRT (.tflite) variants: export, classify through their backends, --target profiles.

Checked on the *trained* toy CLIP (clap-edge-toy/toyworld): fp32 variants must give the same top-1 as fp32
ONNX on the toy test images and logits within 1e-3 of it (an independent run of model.onnx in ONNX Runtime).
int8 variants are exercised by bench/mobile_table.py, not here (their lowering costs minutes on 2 cores).
ExecuTorch tests need the [executorch] extra; LiteRT tests need ai-edge-litert here and litert-torch in this
Python or in $CLAP_EDGE_LITERT_PYTHON (litert-torch cannot share the [sign] extra's environment; docs/mobile.md).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from clap_edge.apps.cli import main
from clap_edge.export.bundle import Bundle
from clap_edge.toyworld.world import CLASSES

HAVE_ET = importlib.util.find_spec("executorch") is not None
HAVE_LITERT_RUNTIME = importlib.util.find_spec("ai_edge_litert") is not None
HAVE_LITERT_CONVERTER = bool(os.environ.get("CLAP_EDGE_LITERT_PYTHON")) or importlib.util.find_spec("litert_torch")
need_et = pytest.mark.skipif(not HAVE_ET, reason="ExecuTorch not installed: pip install 'clap-edge[executorch]'")
need_litert = pytest.mark.skipif(
    not (HAVE_LITERT_RUNTIME and HAVE_LITERT_CONVERTER),
    reason="LiteRT needs ai-edge-litert here and litert-torch here or in $CLAP_EDGE_LITERT_PYTHON (docs/mobile.md)")


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory):
    """32 toy-world test images (8 classes x 2 domains x 2)."""
    from clap_edge.toyworld.dataset import write_dataset

    root = tmp_path_factory.mktemp("mobile-data") / "toy"
    write_dataset(root, domains=("id", "both"), per_class=2, seed=7)
    return root


@pytest.fixture(scope="module")
def mobile_bundle(tmp_path_factory, toy_images):
    """The trained toy CLIP with the fp32 .pte and .tflite variants that are installable here."""
    import torch

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    if not (HAVE_ET or (HAVE_LITERT_RUNTIME and HAVE_LITERT_CONVERTER)):
        pytest.skip("neither the [executorch] nor the [litert] extra is installed")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("mobile") / "bundle"
    return export_bundle(ExportConfig(
        out=out, model_name="clap-edge-toy", pretrained="toyworld", classes=list(CLASSES), torch_program=False,
        executorch=("fp32",) if HAVE_ET else (),
        litert=("fp32",) if HAVE_LITERT_RUNTIME and HAVE_LITERT_CONVERTER else ()))


def _test_batch(bundle, root):
    from clap_edge.core.images import list_images, load_image
    from clap_edge.core.preprocess import Preprocessor

    pre = Preprocessor(bundle.manifest.preprocess)
    paths = list_images([root / "test"])
    return paths, np.stack([pre(load_image(p)) for p in paths]).astype(np.float32)


def _onnx_logits(bundle, batch):
    """model.onnx in a plain ONNX Runtime session: the reference, run without the runtime's runners."""
    import onnxruntime as ort

    from clap_edge.export.bundle import ClassMatrix

    session = ort.InferenceSession(str(bundle.root / "model.onnx"), providers=["CPUExecutionProvider"])
    return ClassMatrix.from_bundle(bundle).logits(session.run(["embedding"], {"image": batch})[0])


def _check_backend_matches_onnx(mobile_bundle, toy_images, backend, variant):
    from clap_edge.runtime.classifier import Classifier

    with Bundle.open(mobile_bundle) as bundle:
        assert variant in bundle.variants, bundle.variants
        parity = bundle.manifest.parity[variant]
        assert parity["top1_agreement_vs_fp32"] == 1.0 and parity["max_abs_logit_diff_vs_fp32"] < 1e-3
        paths, batch = _test_batch(bundle, toy_images)
        want = _onnx_logits(bundle, batch)
    with Classifier.open(mobile_bundle, backend=backend, threads=1) as clf:
        got = clf.runner.infer(batch)  # 32 images: more than the .pte's batch bound, so chunks are exercised
    assert got.logits.shape == want.shape == (len(paths), len(CLASSES))
    np.testing.assert_array_equal(got.logits.argmax(1), want.argmax(1))
    assert np.abs(got.logits - want).max() < 1e-3
    assert np.allclose(np.linalg.norm(got.embedding, axis=1), 1.0, atol=1e-4)
    return paths


def _classify_labels(bundle, folder, backend):
    result = CliRunner().invoke(main, ["classify", str(bundle), str(folder), "--backend", backend, "--json",
                                       "--top-k", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return {r["path"]: r["labels"][0] for r in map(json.loads, filter(str.strip, result.stdout.splitlines()))}


@need_et
def test_executorch_fp32_top1_identical_to_onnx(mobile_bundle, toy_images):
    _check_backend_matches_onnx(mobile_bundle, toy_images, "executorch", "executorch-fp32")


@need_et
def test_classify_cli_through_executorch_agrees_with_onnxruntime(mobile_bundle, toy_images):
    folder = toy_images / "test" / "id"
    assert _classify_labels(mobile_bundle, folder, "executorch") == _classify_labels(mobile_bundle, folder,
                                                                                     "onnxruntime")


@need_litert
def test_litert_fp32_top1_identical_to_onnx(mobile_bundle, toy_images):
    _check_backend_matches_onnx(mobile_bundle, toy_images, "litert", "litert-fp32")


@need_litert
def test_classify_cli_through_litert_agrees_with_onnxruntime(mobile_bundle, toy_images):
    folder = toy_images / "test" / "both"
    assert _classify_labels(mobile_bundle, folder, "litert") == _classify_labels(mobile_bundle, folder, "onnxruntime")


@need_et
def test_tampered_pte_is_refused_with_one_line(mobile_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(mobile_bundle, copy)
    data = bytearray((copy / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0x80
    (copy / "model.pte").write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["classify", str(copy), str(copy / "model.pte"), "--backend", "executorch"])
    assert result.exit_code == 2
    assert "model.pte" in result.stderr and "sha256" in result.stderr and "Traceback" not in result.output


def test_backend_without_its_variant_names_what_the_bundle_has(runtime_bundle):
    from clap_edge.core.errors import BackendUnavailableError
    from clap_edge.runtime.backends import usable_runner_class

    with Bundle.open(runtime_bundle) as bundle:
        for backend, variant in (("executorch", "executorch-fp32"), ("litert:int8", "litert-int8")):
            try:
                usable_runner_class(bundle, backend)
            except BackendUnavailableError as e:  # either not installed, or no such model in the bundle
                assert "not installed" in str(e) or (variant in str(e) and "int8" in str(e))
            else:
                pytest.fail(f"{backend} accepted a bundle without {variant}")


@pytest.mark.parametrize("target, has, lacks", [
    ("arm-phone", {"executorch": ("fp32", "int8"), "litert": ("fp32",)}, ("int8", "openvino_int8")),
    ("x86", {"int8": True, "int8_static": True, "openvino_int8": True}, ()),
    ("jetson", {"int8_static": True, "fp16": True}, ("openvino_int8",)),
])
def test_target_profiles(target, has, lacks):
    from clap_edge.export.builders.mobile_variants import target_settings

    settings = target_settings(target)
    assert {k: settings[k] for k in has} == has
    assert not any(settings.get(k) for k in lacks)


@pytest.mark.parametrize("args, message", [
    (["--executorch", "fp64"], "--executorch: expected fp32, int8 or fp32,int8"),
    (["--litert", "int8"], "need --calibration DIR"),
    (["--target", "arm-phone"], "--target arm-phone builds them"),
])
def test_bad_mobile_export_options_are_one_line_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(main, ["export", "--model", "clap-edge-tiny", "--no-head", "--classes", "a,b",
                                       "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()
