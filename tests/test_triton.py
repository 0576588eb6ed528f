"""export-triton: a model repository a stock Triton server loads, checked with Triton's own config protobuf."""

from __future__ import annotations

import hashlib
import json
import os
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
    assert set(outs) == {o["name"] for o in m["outputs"]} | {"logits"}  # logits: the class matrix baked in
    for o in m["outputs"] + [{"name": "logits", "shape": ["N", len(m["class_names"])]}]:
        assert list(outs[o["name"]].dims) == o["shape"][1:]
        assert outs[o["name"]].data_type == model_config_pb2.TYPE_FP32
    assert outs["logits"].label_filename == "labels.txt" and outs["embedding"].label_filename == ""
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = cfg.instance_group
    assert group.count == 3 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (dest / "labels.txt").read_text().splitlines() == m["class_names"]
    _assert_baked(runtime_bundle, dest / "1" / "model.onnx", "model.onnx")
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
    assert logits.shape[1] == {o.name: o for o in cfg.output}["logits"].dims[0] == len(labels)
    assert [labels[i] for i in logits.argmax(axis=1)] == [p.label for p in reference]


def test_openvino_and_int8(runtime_bundle, tmp_path):
    dest = export_triton(runtime_bundle, tmp_path / "repo", TritonConfig(backend="openvino", precision="int8",
                                                                         model_name="tiny-ov"))
    cfg = _parse(dest)
    assert cfg.backend == "openvino" and cfg.platform == "" and cfg.default_model_filename == "model.onnx"
    _assert_baked(runtime_bundle, dest / "1" / "model.onnx", "model.int8.onnx")


def _assert_baked(bundle, baked, source):
    """The repository's model is the bundle's model (same embedding) with the runtime's logits appended."""
    import onnxruntime as ort

    from clap_edge.export.bundle import Bundle, ClassMatrix

    with Bundle.open(bundle) as b:
        classes = ClassMatrix.from_bundle(b)
        batch = np.random.default_rng(5).standard_normal((3, *b.input_shape)).astype(np.float32)
    run = lambda path, names: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        names, {"image": batch})
    (emb,) = run(bundle / source, ["embedding"])
    baked_emb, baked_logits = run(baked, ["embedding", "logits"])
    np.testing.assert_array_equal(baked_emb, emb)
    np.testing.assert_allclose(baked_logits, classes.logits(emb), atol=1e-4)  # the runtime's own logits


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


# ---- generated, not templated (issue 17): names, labels, trust, full disk ------------------------------------

INJECTION = 'logits"\n  label_filename: "labels.txt"\n}\ndefault_model_filename: "../../../../outside/evil.onnx"\n#'


def _edited(runtime_bundle, tmp_path, edit):
    """A copy of the bundle with the manifest edited and its digest recomputed (so the semantic checks decide)."""
    from clap_edge.export.bundle.writer import write_manifest

    b = shutil.copytree(runtime_bundle, tmp_path / "edited")
    m = _manifest(b)
    edit(m)
    write_manifest(b, m, validate=False)
    return b


def test_crafted_output_name_cannot_inject_a_model_filename(runtime_bundle, tmp_path, monkeypatch):
    from clap_edge.export.builders import triton

    from dataclasses import replace

    from clap_edge.export.bundle import Bundle

    m = Bundle.open(runtime_bundle).manifest
    m = replace(m, outputs=(replace(m.outputs[0], name=INJECTION), *m.outputs[1:]))
    with pytest.raises(BundleError, match="manifest output name .* not allowed in a Triton config"):
        triton.model_config_text(m, TritonConfig())
    bad = _edited(runtime_bundle, tmp_path, lambda d: d["outputs"][0].__setitem__("name", INJECTION))
    with pytest.raises(ClapEdgeError):  # refused by the manifest rules or the name rule: either way one line
        export_triton(bad, tmp_path / "repo")
    assert not (tmp_path / "repo" / "clap_edge").exists() and not (tmp_path / "outside").exists()
    # Even with the name rule switched off, text_format escapes: the text parses back to the intended config.
    monkeypatch.setattr(triton, "_TENSOR_NAME", __import__("re").compile(r".*", __import__("re").DOTALL))
    intended = triton.model_config(m, TritonConfig())
    cfg = text_format.Parse(triton.model_config_text(m, TritonConfig()), model_config_pb2.ModelConfig())
    assert cfg == intended and cfg.default_model_filename == "" and cfg.output[0].name == INJECTION
    assert len(cfg.output) == len(m.outputs) + 1  # + the baked logits


@pytest.mark.parametrize("name", ["../escape", ".", "..", "a/b", "name\n", "", "-x", "x" * 129])
def test_model_name_is_a_plain_directory_name(name, tmp_path):
    with pytest.raises(ClapEdgeError, match="model name"):
        TritonConfig(model_name=name)


@pytest.mark.parametrize("name", ["dog\nfish", "dog\rfish", "dog\x1b[31m", "dog\u2028fish", "dog\x85", "", "\ud800"])
def test_labels_refuse_names_that_break_a_line(name):
    from clap_edge.export.builders.triton import labels_text

    with pytest.raises(BundleError, match="class name 1 .* cannot be a line of labels.txt"):
        labels_text(["cat", name, "car"], "b")
    text = labels_text(["cat", "dög", "car"], "b").decode("utf-8")
    assert text.split("\n") == ["cat", "dög", "car", ""]


def test_newline_class_name_never_shifts_labels(runtime_bundle, tmp_path):
    bad = _edited(runtime_bundle, tmp_path, lambda d: d["class_names"].__setitem__(1, "dog\ncar"))
    with pytest.raises(ClapEdgeError, match="class name|control|newline"):
        export_triton(bad, tmp_path / "repo")
    assert not (tmp_path / "repo" / "clap_edge").exists()


def _pub(keys, name):
    (pub,) = [p for p in keys.iterdir() if p.name.startswith(name) and p.suffix == ".pub"]
    return pub


def test_cli_trusted_key_checks_the_bytes_it_copies(runtime_bundle, keys, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from clap_edge.apps.cli import main
    from clap_edge.export.bundle import snapshot

    signed = shutil.copytree(runtime_bundle, tmp_path / "signed")
    assert CliRunner().invoke(main, ["sign", str(signed), "--key", str(keys / "alice.pem")]).exit_code == 0
    ok = CliRunner().invoke(main, ["export-triton", str(signed), str(tmp_path / "repo"), "--trusted-key",
                                   str(_pub(keys, "alice"))])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "repo" / "clap_edge" / "labels.txt").read_text().splitlines() == _manifest(signed)["class_names"]
    wrong = CliRunner().invoke(main, ["export-triton", str(signed), str(tmp_path / "repo2"), "--trusted-key",
                                      str(_pub(keys, "mallory"))])
    assert wrong.exit_code == 2 and "signature check failed" in wrong.output and "Traceback" not in wrong.output
    assert not (tmp_path / "repo2").exists()
    # A swap right after the copy was checked: the repository is still written from the verified copy.
    forged = _edited(signed, tmp_path, lambda d: d.__setitem__("class_names", d["class_names"][::-1]))
    with open(forged / "model.onnx", "ab") as f:  # another model too, its digest recomputed: a consistent forgery
        f.write(b"forged")
    from clap_edge.export.bundle.writer import write_manifest

    m = _manifest(forged)
    m["files"]["model.onnx"]["sha256"] = hashlib.sha256((forged / "model.onnx").read_bytes()).hexdigest()
    m["files"]["model.onnx"]["bytes"] = (forged / "model.onnx").stat().st_size
    write_manifest(forged, m, validate=False)
    real_open = snapshot.Bundle.open

    def open_then_swap(path, *a, **kw):
        opened = real_open(path, *a, **kw)
        shutil.rmtree(signed)
        shutil.copytree(forged, signed)
        return opened

    monkeypatch.setattr(snapshot.Bundle, "open", open_then_swap)
    swapped = CliRunner().invoke(main, ["export-triton", str(signed), str(tmp_path / "repo3"), "--trusted-key",
                                        str(_pub(keys, "alice"))])
    assert swapped.exit_code == 0, swapped.output
    labels = (tmp_path / "repo3" / "clap_edge" / "labels.txt").read_text().splitlines()
    assert labels == _manifest(runtime_bundle)["class_names"] != _manifest(signed)["class_names"]
    model = (tmp_path / "repo3" / "clap_edge" / "1" / "model.onnx").read_bytes()
    from clap_edge.export.builders.triton import bake_classes
    from clap_edge.export.bundle import Bundle, ClassMatrix

    with Bundle.open(runtime_bundle) as b:  # the repository holds the verified model, with its classes baked in
        expected = bake_classes(runtime_bundle / "model.onnx", tmp_path / "expected.onnx", ClassMatrix.from_bundle(b))
    assert b"forged" in (signed / "model.onnx").read_bytes()
    assert model == expected.read_bytes() and b"forged" not in model


def test_full_disk_is_one_line_and_leaves_nothing(runtime_bundle, tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from clap_edge.apps.cli import main
    from clap_edge.export.builders import triton

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(triton.shutil, "copyfile", full)
    result = CliRunner().invoke(main, ["export-triton", str(runtime_bundle), str(tmp_path / "repo")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and "No space left on device" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "repo" / "clap_edge").exists()
    assert not [p for p in (tmp_path / "repo").iterdir() if "clap-edge" in p.name]  # no staging debris, no lock


def test_copy_changed_after_the_check_is_refused(runtime_bundle, tmp_path, monkeypatch):
    from clap_edge.export.builders import triton

    real = shutil.copyfile

    def copy_then_tamper(src, dst, *a, **kw):
        out = real(src, dst, *a, **kw)
        with open(dst, "ab") as f:
            f.write(b"x")
        return out

    monkeypatch.setattr(triton.shutil, "copyfile", copy_then_tamper)
    with pytest.raises(BundleError, match="changed while it was copied"):
        export_triton(runtime_bundle, tmp_path / "repo")
    assert not (tmp_path / "repo" / "clap_edge").exists()


def test_full_temp_disk_while_copying_for_the_check_is_one_line(runtime_bundle, keys, tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from clap_edge.apps.cli import main
    from clap_edge.export.bundle import snapshot

    made = []
    real = snapshot.staging_tempdir

    def tracked(name):
        made.append(real(name))
        return made[-1]

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshot, "staging_tempdir", tracked)
    monkeypatch.setattr(snapshot.shutil, "copyfileobj", full)
    result = CliRunner().invoke(main, ["export-triton", str(runtime_bundle), str(tmp_path / "repo"), "--trusted-key",
                                       str(_pub(keys, "alice"))])
    assert result.exit_code == 2 and "cannot make a private copy" in result.output, result.output
    assert "No space left on device" in result.output and len(result.output.strip().splitlines()) == 1
    assert made and not any(os.path.exists(t.name) for t in made)  # the partial copy is gone
    assert not (tmp_path / "repo" / "clap_edge").exists()


def test_export_to_a_really_full_disk(runtime_bundle, tiny_disk):
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    result = CliRunner().invoke(main, ["export-triton", str(runtime_bundle), str(tiny_disk / "repo")])
    assert result.exit_code == 2 and "No space left on device" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert list((tiny_disk / "repo").iterdir()) == []  # no half-written model dir, no staging folder, no lock
