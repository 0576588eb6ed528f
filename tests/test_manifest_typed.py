"""The contract as data: ``Bundle.manifest`` is one frozen, typed :class:`Manifest` (core's one
``PreprocessCfg`` inside it), the writer takes one, JSON round-trips through it unchanged, and engine
sidecars obey ``sidecar.schema.json`` exactly as :meth:`EngineSidecar.from_json` does."""

from __future__ import annotations

import copy
import dataclasses
import json
from importlib import resources

import numpy as np
import pytest

from clap_edge import __version__
from clap_edge.core.errors import BundleError
from clap_edge.core.preprocess import PreprocessCfg, PreprocessConfig, Preprocessor
from clap_edge.export import bundle as bundle_pkg
from clap_edge.export.bundle import (Bundle, BundleWriter, EngineEntry, FileEntry, Manifest, ModelInfo, TensorSpec,
                                     add_to_bundle, names, sha256_file, write_manifest)
from clap_edge.export.bundle.engines import DeviceInfo, EngineSidecar
from manifest_corpus import EDITS, base_manifest, edited

# ---- one frozen, typed Manifest -------------------------------------------------------------------


def test_manifest_is_frozen_all_the_way_down():
    m = Manifest.from_dict(base_manifest())
    for obj, name, value in ((m, "embed_dim", 3), (m, "class_names", ("x",)), (m.model, "model_name", "evil"),
                             (m.model.head, "alpha", 9.0), (m.preprocess, "size", (1, 1)),
                             (m.inputs[0], "shape", ("N", 3, 1, 1)), (m.files["model.onnx"], "sha256", "0" * 64)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, value)
    # sequences are tuples: nothing appends a class behind the manifest's back
    assert isinstance(m.class_names, tuple) and isinstance(m.inputs, tuple) and isinstance(m.inputs[0].shape, tuple)
    assert isinstance(m.templates, tuple)
    with pytest.raises(AttributeError):
        m.class_names.append("x")  # type: ignore[attr-defined]


def test_one_preprocess_class_in_core_and_the_manifest():
    assert bundle_pkg.PreprocessCfg is PreprocessCfg is PreprocessConfig
    m = Manifest.from_dict(base_manifest())
    assert type(m.preprocess) is PreprocessCfg
    assert m.preprocess == PreprocessCfg(size=(32, 32), mean=(0.48, 0.45, 0.40), std=(0.26, 0.26, 0.27))
    assert PreprocessCfg.from_dict(m.preprocess) is m.preprocess  # a config passes through as is


@pytest.mark.parametrize("case", ["base", "engines section", "drift section", "extra top-level keys"])
def test_to_dict_from_dict_round_trip_is_equal(case):
    names_ = [e[0] for e in EDITS]
    data = base_manifest() if case == "base" else edited(EDITS[names_.index(case)][1]) if case in names_ else None
    if data is None:  # not in the corpus under that name: build it here
        data = base_manifest() | ({"drift": {"int8": {"agreement": 0.9, "domains": {"a": {"n": 3}}}}}
                                  if case == "drift section" else {"x-vendor": {"k": [1, 2]}})
    m = Manifest.from_dict(copy.deepcopy(data))
    assert m.to_dict() == data
    again = Manifest.from_dict(m.to_dict())
    assert again == m and again.to_dict() == data


def test_typed_views(runtime_bundle):
    with Bundle.open(runtime_bundle) as b:
        m = b.manifest
        assert isinstance(m, Manifest)
        assert m.input_shape == b.input_shape == (3, *b.preprocess.size)
        assert b.class_names == list(m.class_names) and b.variants == m.variants
        assert m.sha256("model.onnx") == sha256_file(runtime_bundle / "model.onnx")
        assert m.sha256("not-listed.bin") is None
        assert b.file_names == list(m.files)
        x = Preprocessor(b.preprocess)(np.zeros((40, 50, 3), dtype=np.uint8))  # core's preprocessor takes it as is
        assert x.shape == b.input_shape


# ---- the writer takes a Manifest ------------------------------------------------------------------


def _fields(n_classes: int = 2, dim: int = 4) -> Manifest:
    return Manifest(model=ModelInfo("tiny"), embed_dim=dim, class_names=[f"c{i}" for i in range(n_classes)],
                    preprocess=PreprocessCfg(size=(8, 8)), inputs=[TensorSpec("image", ["N", 3, 8, 8])],
                    outputs=[TensorSpec("embedding", ["N", dim])], logit_scale=100.0,
                    files={}, parity={"fp32": {"top1_agreement": 1.0}})


def test_writer_takes_a_manifest_and_fills_files_variants_and_versions(tmp_path):
    out = tmp_path / "b"
    with BundleWriter(out) as w:
        w.add_file("model.onnx", b"not really onnx")
        w.add_class_embeddings(np.eye(2, 4, dtype=np.float32))
        w.manifest = _fields()
    with Bundle.open(out) as b:
        m = b.manifest
        assert m.schema_version == names.SCHEMA_VERSION and m.clap_edge_version == __version__
        assert m.variants == {"fp32": "model.onnx"}  # from the file it was given
        assert m.files["model.onnx"] == FileEntry(sha256_file(out / "model.onnx"), len(b"not really onnx"))
        assert set(m.files) == {"model.onnx", names.CLASSES_FILE}
        # everything else is the Manifest it was handed
        assert dataclasses.replace(m, files={}, variants={}, clap_edge_version=None) == _fields()


_WIDE_LOGITS = (TensorSpec("embedding", ("N", 4)), TensorSpec("logits", ("N", 2)))  # a schema-3 model's logits


@pytest.mark.parametrize("given, problem", [
    (None, "no manifest to write"),
    ({"class_names": ["a"]}, "no manifest to write"),  # a raw dict is not what the writer takes
    (dataclasses.replace(_fields(), outputs=_WIDE_LOGITS), r"refusing to write an invalid manifest.json: "
                                                           r"manifest field outputs\[1\]\.name: 'logits' is not a model output"),
])
def test_writer_refuses_anything_but_a_valid_manifest_and_leaves_nothing(tmp_path, given, problem):
    out = tmp_path / "b"
    with pytest.raises(BundleError, match=problem):
        with BundleWriter(out) as w:
            w.add_class_embeddings(np.eye(2, 4, dtype=np.float32))
            w.manifest = given
    assert not out.exists()


def test_write_manifest_writes_the_manifest_it_is_given(tmp_path):
    m = Manifest.from_dict(base_manifest())
    write_manifest(tmp_path, m)
    assert json.loads((tmp_path / names.MANIFEST).read_text()) == m.to_dict()
    assert Manifest.from_dict(json.loads((tmp_path / names.MANIFEST).read_text())) == m


def test_add_to_bundle_returns_the_typed_manifest(runtime_bundle, tmp_path):
    import shutil

    root = shutil.copytree(runtime_bundle, tmp_path / "b")
    entry = EngineEntry(file="engines/x.plan", engine="tensorrt", precision="fp16", sidecar=None,
                        extra={"batch": [1, 2, 4]})
    m = add_to_bundle(root, {"engines/x.plan": b"plan"}, engines=[entry])
    assert isinstance(m, Manifest) and m.engines == (entry,)
    assert m.files["engines/x.plan"].sha256 == sha256_file(root / "engines/x.plan")
    assert Bundle.open(root).manifest == m
    with pytest.raises(BundleError, match=r"engines\[0\]\.file.*names 'engines/gone.plan', which files does not list"):
        add_to_bundle(root, {}, engines=[dataclasses.replace(entry, file="engines/gone.plan")])
    assert Bundle.open(root).manifest == m  # refused before anything was written


# ---- sidecars: sidecar.schema.json and EngineSidecar.from_json agree -------------------------------

SHA = "cd" * 32


def _sidecar() -> dict:
    return EngineSidecar(engine="aoti", file="engines/aoti-cpu-x86_64-avx2-fp32-b1-8-64.pt2", precision="fp32",
                         batch=(1, 8, 64), device=DeviceInfo("cpu", "Core", arch="x86_64", isa="avx2"),
                         library="torch", library_version="2.5.0", source_model="model.pt2", source_sha256=SHA,
                         engine_sha256="ef" * 32, built_utc="2026-01-01T00:00:00Z", build_seconds=3.0).to_json()


def _without(key):
    return lambda d: d.pop(key)


def _put(key, value):
    return lambda d: d.__setitem__(key, value)


# (name, edit, verdict): "ok", "schema" (both refuse), "semantic" (only Python can: batch order)
SIDECAR_EDITS = [
    ("as written", lambda d: None, "ok"),
    ("cuda device", _put("device", {"type": "cuda", "name": "NVIDIA H100", "compute_capability": "9.0"}), "ok"),
    ("no engine_sha256 (schema 2)", _without("engine_sha256"), "schema"),
    ("no source_sha256", _without("source_sha256"), "schema"),
    ("no batch", _without("batch"), "schema"),
    ("no device", _without("device"), "schema"),
    ("engine_sha256 upper case", _put("engine_sha256", "EF" * 32), "schema"),
    ("engine_sha256 short", _put("engine_sha256", "ef" * 31), "schema"),
    ("source_sha256 not a string", _put("source_sha256", 1), "schema"),
    ("unknown engine", _put("engine", "onnx"), "schema"),
    ("engine a list", _put("engine", ["aoti"]), "schema"),
    ("precision an object", _put("precision", {"fp32": 1}), "schema"),
    ("unknown precision", _put("precision", "fp8"), "schema"),
    ("batch of two", _put("batch", [1, 2]), "schema"),
    ("batch zero", _put("batch", [0, 1, 2]), "schema"),
    ("batch float", _put("batch", [1, 2.5, 4]), "schema"),
    ("batch string", _put("batch", "1,8,64"), "schema"),
    ("batch out of order", _put("batch", [8, 4, 64]), "semantic"),
    ("file escapes", _put("file", "../model.pt2"), "schema"),
    ("file absolute", _put("file", "/etc/passwd"), "schema"),
    ("source_model escapes", _put("source_model", "engines/../../x"), "schema"),
    ("source_model is the manifest", _put("source_model", "manifest.json"), "schema"),
    ("device type tpu", _put("device", {"type": "tpu"}), "schema"),
    ("device not an object", _put("device", "cpu"), "schema"),
    ("device name a number", _put("device", {"type": "cpu", "name": 3}), "schema"),
    ("library empty", _put("library", ""), "schema"),
    ("library_version a number", _put("library_version", 10), "schema"),
    ("parity a list", _put("parity", []), "schema"),
    ("build_seconds negative", _put("build_seconds", -1), "schema"),
    ("not an object", lambda d: (d.clear(), d.__setitem__("x", 1)), "schema"),
]


def _sidecar_schema() -> dict:
    return json.loads(resources.files("clap_edge.export.bundle").joinpath("sidecar.schema.json").read_text("utf-8"))


@pytest.mark.parametrize("name, edit, verdict", SIDECAR_EDITS, ids=[e[0] for e in SIDECAR_EDITS])
def test_sidecar_schema_and_python_agree(name, edit, verdict):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(_sidecar_schema())
    d = _sidecar()
    edit(d)
    schema_ok = validator.is_valid(d)
    try:
        back = EngineSidecar.from_json(d, "s.json")
        python_ok = True
    except BundleError as e:
        python_ok = False
        message = str(e)
        assert message.startswith("s.json: engine sidecar") and "\n" not in message
    if verdict == "ok":
        assert schema_ok and python_ok, list(validator.iter_errors(d))[:1]
        assert EngineSidecar.from_json(back.to_json(), "s.json") == back  # and it round-trips
    elif verdict == "schema":
        assert not schema_ok and not python_ok
    else:
        assert schema_ok and not python_ok


def test_sidecar_schema_is_valid_and_requires_what_python_requires():
    jsonschema = pytest.importorskip("jsonschema")
    from clap_edge.export.bundle.engines import ENGINE_KINDS, PRECISIONS, SIDECAR_FIELDS

    schema = _sidecar_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert tuple(schema["required"]) == SIDECAR_FIELDS and "engine_sha256" in SIDECAR_FIELDS
    assert schema["properties"]["engine"]["enum"] == list(ENGINE_KINDS)
    assert schema["properties"]["precision"]["enum"] == list(PRECISIONS)
    assert schema["$defs"]["file_name"] == json.loads(
        resources.files("clap_edge.export.bundle").joinpath(names.SCHEMA_FILE).read_text("utf-8"))["$defs"]["file_name"]
