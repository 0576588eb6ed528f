"""export-triton: a model repository a stock Triton server loads, checked with Triton's own config protobuf."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clap_edge.core.errors import BundleError, ClapEdgeError
from clap_edge.export.builders.triton import TritonConfig, export_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
text_format = pytest.importorskip("google.protobuf.text_format")


def _parse(model_dir):
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_onnxruntime_repository_matches_manifest(runtime_bundle, tmp_path):
    dest = export_triton(runtime_bundle, tmp_path / "repo", TritonConfig(max_batch_size=16, instances=3,
                                                                         max_queue_delay_us=500))
    m = _manifest(runtime_bundle)
    cfg = _parse(dest)
    assert dest == tmp_path / "repo" / "clap_edge" and cfg.name == "clap_edge"
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    (inp,) = cfg.input
    assert inp.name == m["inputs"][0]["name"] and list(inp.dims) == m["inputs"][0]["shape"][1:]
    assert inp.data_type == model_config_pb2.TYPE_FP32
    outs = {o.name: o for o in cfg.output}
    assert set(outs) == {o["name"] for o in m["outputs"]}
    for o in m["outputs"]:
        assert list(outs[o["name"]].dims) == o["shape"][1:]
        assert outs[o["name"]].data_type == model_config_pb2.TYPE_FP32
    assert outs["logits"].label_filename == "labels.txt" and outs["embedding"].label_filename == ""
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = cfg.instance_group
    assert group.count == 3 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (dest / "labels.txt").read_text().splitlines() == m["class_names"]
    model = dest / "1" / "model.onnx"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == m["files"]["model.onnx"]["sha256"]
    pre = json.loads((dest / "preprocess.json").read_text())
    assert pre["preprocess"]["mean"] == m["preprocess"]["mean"] and pre["shape"][1:] == m["inputs"][0]["shape"][1:]


def test_label_file_order_is_the_logit_order(runtime_bundle, tmp_path):
    """What Triton would do: run 1/model.onnx on the tensor a client sends, name argmax by labels.txt line."""
    import onnxruntime as ort

    from clap_edge.runtime import Classifier

    dest = export_triton(runtime_bundle, tmp_path / "repo")
    cfg = _parse(dest)
    labels = (dest / "labels.txt").read_text().splitlines()
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 70, 3), dtype=np.uint8)) for i in range(6)]
    session = ort.InferenceSession(str(dest / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    with Classifier.open(runtime_bundle, backend="onnxruntime", threads=1) as clf:
        batch = np.stack([clf.preprocess(im) for im in images])
        reference = clf.predict(images, top_k=1)
    logits = dict(zip([o.name for o in session.get_outputs()],
                      session.run(None, {cfg.input[0].name: batch})))["logits"]
    assert logits.shape[1] == cfg.output[0].dims[0] == len(labels)
    assert [labels[i] for i in logits.argmax(axis=1)] == [p.label for p in reference]


def test_openvino_and_int8(runtime_bundle, tmp_path):
    dest = export_triton(runtime_bundle, tmp_path / "repo", TritonConfig(backend="openvino", precision="int8",
                                                                         model_name="tiny-ov"))
    cfg = _parse(dest)
    assert cfg.backend == "openvino" and cfg.platform == "" and cfg.default_model_filename == "model.onnx"
    digest = hashlib.sha256((dest / "1" / "model.onnx").read_bytes()).hexdigest()
    assert digest == _manifest(runtime_bundle)["files"]["model.int8.onnx"]["sha256"]


@pytest.fixture
def engine_bundle(runtime_bundle, tmp_path):
    """A copy of the bundle whose 'engines' section (as `clap-edge build-engine` writes it: file, sidecar, engine,
    precision, batch [min, opt, max], device, gpu) lists two opaque TensorRT plans and a CPU AOTInductor package."""
    from clap_edge.export.bundle.writer import add_to_bundle

    root = shutil.copytree(runtime_bundle, tmp_path / "with-engines")
    files, entries = {}, []
    for name, kind, ext, gpu, batch in (("h100", "tensorrt", "plan", "NVIDIA H100", [1, 8, 16]),
                                        ("l4", "tensorrt", "plan", "NVIDIA L4", [1, 4, 8]),
                                        ("cpu", "aoti", "pt2", None, [1, 8, 32])):
        stem = f"engines/{kind}-{name}-fp16-b{batch[0]}-{batch[2]}"
        files[f"{stem}.{ext}"] = f"{name}-engine".encode()
        files[f"{stem}.json"] = json.dumps({"engine": kind, "gpu": gpu, "batch": batch}).encode()
        entries.append({"file": f"{stem}.{ext}", "sidecar": f"{stem}.json", "engine": kind, "precision": "fp16",
                        "batch": batch, "device": name, "gpu": gpu, "library_version": "10.0"})
    add_to_bundle(root, files, engines=entries)
    return root


def test_tensorrt_plan_from_engines_section(engine_bundle, tmp_path):
    with pytest.raises(ClapEdgeError, match="2 TensorRT engines .*NVIDIA H100.*NVIDIA L4"):  # aoti is not one
        export_triton(engine_bundle, tmp_path / "repo", TritonConfig(backend="tensorrt"))
    with pytest.raises(BundleError, match="no TensorRT engine 'a100.plan'"):
        export_triton(engine_bundle, tmp_path / "repo", TritonConfig(backend="tensorrt", engine="a100.plan"))
    dest = export_triton(engine_bundle, tmp_path / "repo",
                         TritonConfig(backend="tensorrt", engine="tensorrt-h100-fp16-b1-16.plan", max_batch_size=64))
    cfg = _parse(dest)
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 16  # capped at the engine's optimisation profile
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (dest / "1" / "model.plan").read_bytes() == b"h100-engine"
    assert json.loads((dest / "engine.json").read_text())["gpu"] == "NVIDIA H100"


def test_tensorrt_without_engine_and_tampered_model(runtime_bundle, tmp_path):
    with pytest.raises(BundleError, match="no TensorRT engine"):
        export_triton(runtime_bundle, tmp_path / "repo", TritonConfig(backend="tensorrt"))
    bad = shutil.copytree(runtime_bundle, tmp_path / "bad")
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="model.onnx"):
        export_triton(bad, tmp_path / "repo")
    assert not (tmp_path / "repo" / "clap_edge").exists()  # nothing half-written


def test_cli_export_triton_and_refuses_overwrite(runtime_bundle, tmp_path):
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["export-triton", str(runtime_bundle), str(repo), "--instances", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.output)["files"]) == ["1/model.onnx", "config.pbtxt", "labels.txt",
                                                          "preprocess.json"]
    assert _parse(repo / "clap_edge").instance_group[0].count == 2
    again = CliRunner().invoke(main, ["export-triton", str(runtime_bundle), str(repo)])
    assert again.exit_code == 2 and "already exists" in again.output
    forced = CliRunner().invoke(main, ["export-triton", str(runtime_bundle), str(repo), "--force",
                                       "--max-batch-size", "4"])
    assert forced.exit_code == 0 and _parse(repo / "clap_edge").max_batch_size == 4
