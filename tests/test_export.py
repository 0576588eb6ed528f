"""export_bundle: ONNX parity with torch, the bundle round trip, the manifest, tamper checks, atomic failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clap_edge import __version__
from clap_edge.core.errors import BundleError
from clap_edge.core.preprocess import PreprocessCfg
from clap_edge.export.bundle import SCHEMA_VERSION, Bundle, HeadInfo, Manifest, ModelInfo, TensorSpec, sha256_file
from clap_edge.export.bundle.writer import write_manifest
from clap_edge.export.builders.exporter import ExportConfig, export_bundle

TINY_CLASSES = ["cat", "dog", "bird", "fish"]


def _random_batch(n: int, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def fused(tiny_head_path):
    from clap_edge.fuse import build_fused
    from clap_edge.head import CLAPHead
    from clap_edge.models import load_model

    torch.manual_seed(0)
    return build_fused(load_model("clap-edge-tiny"), TINY_CLASSES, CLAPHead.load(tiny_head_path))


def test_onnx_matches_torch_on_tiny_with_dynamic_batch(fused, tmp_path):
    import onnx

    from clap_edge.export.builders.onnx_export import export_onnx, run_torch
    from clap_edge.export.parity import compare_logits, run_onnx

    from clap_edge.export.bundle import ClassMatrix

    result = export_onnx(fused.image_model(), torch.from_numpy(_random_batch(2, seed=1)), tmp_path / "m.onnx")
    graph = onnx.load(str(result.path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["embedding"]  # schema 4: the class matrix is data
    classes = ClassMatrix(fused.classes.T.numpy(), None, float(fused.logit_scale))
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert result.opset == 17
    for n in (1, 5):  # batch sizes other than the traced one
        batch = _random_batch(n)
        ref_logits, ref_emb = run_torch(fused, batch)
        logits, emb = run_onnx(result.path, batch, classes)
        report = compare_logits(ref_logits, logits)
        assert report.max_abs_logit_diff <= 1e-4 and report.top1_agreement == 1.0, report
        assert np.abs(ref_emb - emb).max() <= 1e-5
    program_emb = result.program.module()(torch.from_numpy(_random_batch(3)))
    np.testing.assert_allclose(program_emb.detach().numpy(), run_torch(fused, _random_batch(3))[1], atol=1e-5)


def test_manifest_fields(tiny_bundle):
    m = Bundle.open(tiny_bundle).manifest
    assert isinstance(m, Manifest)
    assert m.schema_version == SCHEMA_VERSION and m.clap_edge_version == __version__
    assert m.model == ModelInfo("clap-edge-tiny", None, HeadInfo(alpha=0.3, latent_dim=32, activation="silu"))
    assert m.class_names == tuple(TINY_CLASSES)  # defaulted from the head's metadata
    assert m.alpha == 0.3 and m.embed_dim == 64 and m.templates == ("a photo of a {c}.",)
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert isinstance(m.preprocess, PreprocessCfg) and m.preprocess.size == (64, 64)
    assert m.inputs == (TensorSpec("image", ("N", 3, 64, 64), "float32"),)
    assert m.outputs == (TensorSpec("embedding", ("N", 64)),)
    assert m.classes.bias is False and m.classes.provenance == {"method": "zero-shot-text", "templates": 1}
    assert m.opset == 17 and m.flops_per_image > 1e6
    assert m.variants == {"fp32": "model.onnx", "int8": "model.int8.onnx", "torch": "model.pt2"}
    fp32 = m.parity["fp32"]
    assert fp32["max_abs_logit_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0 and fp32["tolerance"] == 1e-3
    int8 = m.parity["int8"]
    agreement, diff = _variant_vs_fp32_by_hand(tiny_bundle, "model.int8.onnx")
    assert int8["top1_agreement_vs_fp32"] == pytest.approx(agreement, abs=1e-9)
    assert int8["max_abs_logit_diff_vs_fp32"] == pytest.approx(diff, rel=1e-4) and diff > 0
    assert int8["n_images"] == fp32["n_images"] == 8
    assert set(m.files) == {"model.onnx", "model.int8.onnx", "model.pt2", "head.safetensors",
                               "classes.safetensors", "calibration.npy"}


def test_bundle_round_trip(tiny_bundle, tiny_head_path):
    from clap_edge.export.parity import compare_logits, run_onnx
    from clap_edge.head import CLAPHead

    bundle = Bundle.open(tiny_bundle)
    for name, entry in bundle.manifest.files.items():
        assert sha256_file(bundle.file(name)) == entry.sha256
    emb = bundle.class_embeddings()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    calib = np.load(bundle.file("calibration.npy"))
    assert calib.shape == (8, 3, 64, 64) and calib.dtype == np.float32
    # the stored program and the ONNX model are the same classifier
    from clap_edge.export.bundle import ClassMatrix

    logits, embedding = run_onnx(bundle.variant_file("fp32"), calib, ClassMatrix.from_bundle(bundle))
    program = torch.export.load(str(bundle.variant_file("torch")))
    pt_emb = program.module()(torch.from_numpy(calib)).detach().numpy()
    assert np.abs(pt_emb - embedding).max() <= 1e-5
    # logits are logit_scale * embedding @ classes.T with the bundle's own class embeddings
    np.testing.assert_allclose(logits, bundle.manifest.logit_scale * embedding @ emb.T, atol=1e-4)
    head = CLAPHead.load(bundle.file("head.safetensors"))
    original = CLAPHead.load(tiny_head_path)
    assert head.alpha == 0.3
    assert torch.equal(head.projection.weight, original.projection.weight)  # unfolded weights


def _copy(bundle, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(bundle, dest)
    return dest


def test_flipped_byte_in_any_file_is_named(tiny_bundle, tmp_path):
    names = Bundle.open(tiny_bundle).file_names
    for name in names:
        copy = _copy(tiny_bundle, tmp_path / name.replace(".", "_"))
        path = copy / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(BundleError, match=name.replace(".", r"\.")):
            Bundle.open(copy, verify=False).file(name)
        report = Bundle.open(copy, verify=False).verify_all()
        assert [n for n, r in report.items() if r != "ok"] == [name]


def test_missing_file(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    (copy / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing file 'model\.int8\.onnx'"):
        Bundle.open(copy).variant_file("int8")


def _edit_manifest(bundle_dir, **changes):
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    write_manifest(path.parent, manifest, validate=False)  # with its digest: the edit is what is tested


def test_newer_schema_refused(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    _edit_manifest(copy, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(BundleError, match="newer"):
        Bundle.open(copy)


def test_class_count_mismatch(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    _edit_manifest(copy, class_names=TINY_CLASSES[:3])  # the class embeddings' own check is what fails
    with pytest.raises(BundleError, match=r"classes\.safetensors has shape \[4, 64\].*3 classes"):
        Bundle.open(copy)


def test_failed_parity_writes_nothing(tmp_path, monkeypatch, tiny_bundle):
    import clap_edge.export.parity as parity

    real = parity.run_onnx

    def drifting(path, batch, classes, threads=None):  # an ONNX model that disagrees with torch
        logits, emb = real(path, batch, classes, threads)
        return logits + 0.01, emb

    monkeypatch.setattr(parity, "run_onnx", drifting)
    # --force over an existing bundle: a failed export leaves it untouched and adds nothing beside it
    existing = _copy(tiny_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    with pytest.raises(BundleError, match="parity check failed.*nothing was written"):
        export_bundle(ExportConfig(out=existing, model_name="clap-edge-tiny", classes=["a", "b"],
                                   torch_program=False, overwrite=True))
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no staging directory left behind


def test_existing_output_refused(tiny_bundle):
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(ExportConfig(out=tiny_bundle, model_name="clap-edge-tiny", classes=["a"]))


def test_config_errors(tmp_path):
    from clap_edge.core.errors import ClapEdgeError, PromptError

    with pytest.raises(ClapEdgeError, match="no model"):
        export_bundle(ExportConfig(out=tmp_path / "x", classes=["a"]))
    with pytest.raises(PromptError, match="no class names"):
        export_bundle(ExportConfig(out=tmp_path / "x", model_name="clap-edge-tiny"))
    with pytest.raises(ClapEdgeError, match="needs a head"):
        export_bundle(ExportConfig(out=tmp_path / "x", model_name="clap-edge-tiny", classes=["a"], alpha=0.5))
    assert not (tmp_path / "x").exists()


def test_head_for_another_model_refused(tmp_path):
    from clap_edge.core.errors import CheckpointError
    from clap_edge.head import CLAPHead, HeadConfig

    head = CLAPHead(HeadConfig(in_dim=32, model_name="other-model", class_names=["a", "b"]))
    with pytest.raises(CheckpointError, match="32-d embeddings but clap-edge-tiny gives 64-d.*'other-model'"):
        export_bundle(ExportConfig(out=tmp_path / "x", head=head, model_name="clap-edge-tiny"))
    assert not (tmp_path / "x").exists()


def test_fp16_variant_and_calibration_array(tmp_path, tiny_head_path):
    calib = _random_batch(3, seed=4)
    out = export_bundle(ExportConfig(out=tmp_path / "b", head=tiny_head_path, alpha=0.1, classes=["x", "y"],
                                     templates=["a {c}", "the {c}"], fp16=True, torch_program=False,
                                     calibration=calib))
    bundle = Bundle.open(out)
    m = bundle.manifest
    assert m.variants == {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
    assert m.alpha == 0.1 and m.model.head.alpha == 0.1 and m.class_names == ("x", "y")
    fp16 = m.parity["fp16"]
    agreement, diff = _variant_vs_fp32_by_hand(out, "model.fp16.onnx")
    assert fp16["n_images"] == 3 and fp16["top1_agreement_vs_fp32"] == pytest.approx(agreement, abs=1e-9)
    assert fp16["max_abs_logit_diff_vs_fp32"] == pytest.approx(diff, rel=1e-4)
    assert 0 < fp16["max_abs_logit_diff_vs_fp32"] < 0.1
    np.testing.assert_array_equal(np.load(bundle.file("calibration.npy")), calib)
    import onnx

    model = onnx.load(str(bundle.variant_file("fp16")))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io stays float32
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert ln, "expected LayerNormalization nodes"
    float_inputs = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert all(n.input[1] in float_inputs for n in ln)  # LayerNorm kept in fp32


@pytest.mark.slow
def test_vit_b32_random_init_parity(tmp_path):
    """ViT-B-32 (random init): ONNX Runtime vs torch within 1e-3, recorded in the manifest."""
    torch.set_num_threads(1)
    out = export_bundle(ExportConfig(out=tmp_path / "b32", model_name="ViT-B-32", classes=["cat", "dog", "car"],
                                     torch_program=False, calibration=_b32_batch()))
    fp32 = Bundle.open(out).manifest.parity["fp32"]
    assert fp32["max_abs_logit_diff"] <= 1e-3 and fp32["top1_agreement"] == 1.0


def _b32_batch() -> np.ndarray:
    return np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)


def test_int8_quantises_the_encoder(tiny_bundle):
    import onnx

    fp32 = onnx.load(str(tiny_bundle / "model.onnx"))
    int8 = onnx.load(str(tiny_bundle / "model.int8.onnx"))
    assert [o.name for o in int8.graph.output] == ["embedding"]  # the class matrix is not in the graph at all
    quantised = [n for n in int8.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    float_matmuls = [n for n in fp32.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert 0 < len(quantised) < len(float_matmuls)


def _variant_vs_fp32_by_hand(bundle_dir, variant: str) -> tuple[float, float]:
    """(top-1 agreement, max |dlogit|) of a variant vs model.onnx on calibration.npy, straight from onnxruntime."""
    import onnxruntime as ort

    from safetensors.numpy import load_file

    batch = np.load(Path(bundle_dir) / "calibration.npy")
    w = load_file(str(Path(bundle_dir) / "classes.safetensors"))["class_embeddings"].astype(np.float64)
    scale = json.loads((Path(bundle_dir) / "manifest.json").read_text())["logit_scale"]
    fp32, other = (scale * ort.InferenceSession(str(Path(bundle_dir) / name), providers=["CPUExecutionProvider"])
                   .run(["embedding"], {"image": batch})[0].astype(np.float64) @ w.T for name in ("model.onnx", variant))
    return float(np.mean(fp32.argmax(1) == other.argmax(1))), float(np.abs(fp32 - other).max())
