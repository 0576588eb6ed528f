"""The bundle as a schema: manifest dataclasses <-> JSON, the shipped JSON Schema and the Python
checks agree on a corpus of good and bad manifests, and the fixed names are the same in both."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import names
from clap_edge.export.bundle.manifest import Manifest, ManifestFieldError, loads
from clap_edge.export.bundle.writer import write_manifest
from manifest_corpus import EDITS, base_manifest, edited


def _schema() -> dict:
    text = resources.files("clap_edge.export.bundle").joinpath(names.SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _python_ok(m) -> bool:
    try:
        Manifest.from_dict(m)
        return True
    except ManifestFieldError:
        return False


@pytest.mark.parametrize("name, edit, verdict", EDITS, ids=[e[0] for e in EDITS])
def test_schema_and_python_checks_agree(name, edit, verdict):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(_schema())
    m = edited(edit)
    schema_ok = validator.is_valid(m)
    python_ok = _python_ok(m)
    if verdict == "ok":
        assert python_ok and schema_ok, list(validator.iter_errors(m))[:1]
    elif verdict == "schema":
        assert not python_ok and not schema_ok
    else:  # a rule beyond the schema language: the schema passes it, Python must not
        assert schema_ok and not python_ok


def test_corpus_covers_each_verdict():
    verdicts = [v for _, _, v in EDITS]
    assert verdicts.count("ok") >= 5 and verdicts.count("schema") >= 50 and verdicts.count("semantic") >= 8


def test_schema_is_valid_draft_2020_12_and_names_match_names_py():
    jsonschema = pytest.importorskip("jsonschema")
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    shipped = schema["x-clap-edge-names"]
    assert shipped == {
        "schema_version": names.SCHEMA_VERSION, "manifest": names.MANIFEST, "manifest_digest": names.MANIFEST_DIGEST,
        "signature": names.SIGNATURE_FILE, "classes_file": names.CLASSES_FILE, "classes_tensor": names.CLASSES_TENSOR,
        "classes_bias": names.CLASSES_BIAS, "text_file": names.TEXT_FILE, "input_tokens": names.INPUT_TOKENS,
        "output_text_embedding": names.OUTPUT_TEXT_EMBEDDING, "input_image": names.INPUT_IMAGE,
        "output_logits": names.OUTPUT_LOGITS,
        "output_embedding": names.OUTPUT_EMBEDDING, "variant_files": names.VARIANT_FILES,
    }
    assert schema["properties"]["schema_version"] == {"type": "integer", "minimum": names.SCHEMA_VERSION,
                                                      "maximum": names.SCHEMA_VERSION}


def test_schema_file_is_package_data():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert '"clap_edge.export.bundle" = ["*.json"]' in text


def test_dataclasses_round_trip_json():
    m = base_manifest()
    spec = Manifest.from_dict(m)
    assert spec.preprocess.std == (0.26, 0.26, 0.27) and spec.model.head.latent_dim == 32
    assert spec.files["model.onnx"].bytes == 1000 and spec.variants["int8"] == "model.int8.onnx"
    assert spec.to_dict() == m
    engines = edited(EDITS[[e[0] for e in EDITS].index("engines section")][1])
    spec = Manifest.from_dict(engines)
    assert spec.engines[0].extra == {"gpu": "H100", "profiles": [[1, 32]]}
    assert spec.to_dict() == engines  # free-form extras kept as they were


def test_error_names_the_field_path():
    m = base_manifest()
    m["preprocess"]["std"][1] = 0
    with pytest.raises(ManifestFieldError, match=r"preprocess\.std\[1\]: must be > 0, got 0"):
        Manifest.from_dict(m)
    m = base_manifest()
    m["class_names"] = ["caf\u00e9", "cafe\u0301"]
    with pytest.raises(ManifestFieldError, match=r"class_names\[1\]: is not in Unicode NFC form"):
        Manifest.from_dict(m)


@pytest.mark.parametrize("text, message", [
    ('{"schema_version": NaN}', "NaN is not a finite number"),
    ('{"a": Infinity}', "Infinity is not a finite number"),
    ("[" * 100_000 + "]" * 100_000, "nested more than 32 levels deep"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nested more than 32 levels deep"),
    ("{not json", "not valid JSON"),
    ('{"class_names": ["a"], "x": 1, "class_names": ["b"]}', r'not valid JSON \(duplicate key "class_names"\)$'),
    ('{"preprocess": {"size": [1, 1], "size": [2, 2]}}', r'duplicate key "size"'),
])
def test_loads_refuses_nan_and_deep_nesting_without_a_traceback(text, message):
    with pytest.raises(ManifestFieldError, match=message):
        loads(text)


def test_write_manifest_refuses_an_invalid_manifest_and_writes_the_digest(tmp_path):
    import hashlib

    m = base_manifest()
    write_manifest(tmp_path, m)
    raw = (tmp_path / names.MANIFEST).read_bytes()
    assert (tmp_path / names.MANIFEST_DIGEST).read_text() == f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n"
    m["preprocess"]["mean"][0] = float("nan")
    with pytest.raises(BundleError, match=r"refusing to write an invalid manifest.json.*preprocess\.mean\[0\]"):
        write_manifest(tmp_path, m)
    assert (tmp_path / names.MANIFEST).read_bytes() == raw  # the old one is untouched


def test_schema_bounds_are_the_python_limits():
    from clap_edge.export.bundle.manifest import DTYPES, INTERPOLATIONS, LIMITS, RESIZE_MODES

    s = _schema()
    props, defs = s["properties"], s["$defs"]
    assert props["class_names"]["maxItems"] == LIMITS["classes"]
    assert props["templates"]["maxItems"] == LIMITS["templates"]
    assert props["files"]["maxProperties"] == LIMITS["files"]
    assert props["embed_dim"]["maximum"] == LIMITS["embed_dim"]
    assert props["preprocess"]["properties"]["size"]["items"]["maximum"] == LIMITS["image_side"]
    assert defs["name"]["maxLength"] == LIMITS["name_chars"]
    assert props["preprocess"]["properties"]["interpolation"]["enum"] == list(INTERPOLATIONS)
    assert props["preprocess"]["properties"]["resize_mode"]["enum"] == list(RESIZE_MODES)
    assert defs["tensor"]["properties"]["dtype"]["enum"] == list(DTYPES)
    assert defs["file_name"]["not"]["enum"] == list(names.META_FILES)
