"""Tests that kill the mutants bench/mutation.sh found surviving in the bundle contract (manifest, reader,
signing, engine selection): which field an error names, exact bounds, the manifest's byte format.

Each assertion is a behaviour a user relies on: the one-line error names the field that is wrong (so it
can be fixed), a limit admits its own value and refuses the next, the manifest text the digest covers is
written one way."""

from __future__ import annotations

import json
import pytest

from clap_edge.export.bundle import manifest as mf
from clap_edge.export.bundle.manifest import Manifest, ManifestFieldError, check_version, loads
from clap_edge.export.bundle.names import MIN_SCHEMA_VERSION, SCHEMA_VERSION
from manifest_corpus import EDITS, base_manifest, edited


def _changed_paths(a, b, path=""):
    """JSON paths (``x.y[0]``) where ``b`` differs from ``a``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            sub = f"{path}[{k!r}]" if path == "files" else f"{path}.{k}" if path else k  # files are named by repr
            out += [sub] if (k in a) != (k in b) else _changed_paths(a[k], b[k], sub)
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = [path] if len(a) != len(b) else []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _changed_paths(x, y, f"{path}[{i}]")
        return out
    return [] if (type(a), a) == (type(b), b) else [path]


def _related(field: str, changed: str) -> bool:
    return any(x == y or x.startswith(y + ".") or x.startswith(y + "[") for x, y in ((field, changed), (changed, field)))


REFUSED = [(name, edit) for name, edit, verdict in EDITS if verdict != "ok"]


@pytest.mark.parametrize("name,edit", REFUSED, ids=[n for n, _ in REFUSED])
def test_a_refused_manifest_names_the_field_that_was_edited(name, edit):
    """The error's field is (inside, or the parent of) what the edit changed, and the message says so."""
    m = edited(edit)
    with pytest.raises(ManifestFieldError) as e:
        Manifest.from_dict(m)
    field = e.value.field
    assert isinstance(field, str) and field, f"{name}: no field named ({e.value})"
    changed = _changed_paths(base_manifest(), m)
    assert any(_related(field, c) for c in changed), (name, field, changed)
    assert str(e.value) == f"manifest field {field}: {e.value.problem}"
    assert e.value.problem and "None" != e.value.problem


# ---- bounds admit their own value and refuse the next ------------------------------------------


def test_manifest_size_limit_is_inclusive(monkeypatch):
    text = json.dumps(base_manifest())
    monkeypatch.setitem(mf.LIMITS, "manifest_bytes", len(text))
    assert loads(text)["schema_version"] == base_manifest()["schema_version"]
    monkeypatch.setitem(mf.LIMITS, "manifest_bytes", len(text) - 1)
    with pytest.raises(ManifestFieldError) as e:
        loads(text)
    assert e.value.field == "" and str(e.value) == (f"manifest: {len(text):,} bytes, more than the "
                                                    f"{len(text) - 1:,} allowed")


def _nested(levels: int):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_limit_is_exact():
    depth = mf.LIMITS["depth"]
    loads(json.dumps({"x": _nested(depth - 1)}))  # the number sits at depth `depth`
    with pytest.raises(ManifestFieldError) as e:
        loads(json.dumps({"x": _nested(depth)}))
    assert e.value.field == "x" + "[0]" * depth
    assert e.value.problem == f"nested more than {depth} levels deep"


@pytest.mark.parametrize("text,problem", [('{"a": NaN}', "NaN is not a finite number"),
                                           ('{"a": -Infinity}', "-Infinity is not a finite number"),
                                           ('{"a": ', "not valid JSON")])
def test_json_level_errors_name_the_manifest(text, problem):
    with pytest.raises(ManifestFieldError) as e:
        loads(text)
    assert e.value.field == "" and str(e.value).startswith(f"manifest: {problem}")


def test_schema_version_bounds():
    assert check_version({"schema_version": SCHEMA_VERSION}) == SCHEMA_VERSION
    assert check_version({"schema_version": float(SCHEMA_VERSION)}) == SCHEMA_VERSION  # 2.0 is an integer in JSON
    for bad in (0, -1, True, "2", None, 1.5):
        with pytest.raises(ManifestFieldError) as e:
            check_version({"schema_version": bad})
        assert e.value.field == "schema_version" and e.value.problem == f"must be an integer >= 1, got {bad!r}"
    with pytest.raises(ManifestFieldError, match=rf"{SCHEMA_VERSION + 1} is newer than this clap-edge") as e:
        check_version({"schema_version": SCHEMA_VERSION + 1})
    assert e.value.field == "schema_version"
    if MIN_SCHEMA_VERSION > 1:
        with pytest.raises(ManifestFieldError, match="re-export the bundle with `clap-edge export`") as e:
            check_version({"schema_version": MIN_SCHEMA_VERSION - 1})
        assert e.value.field == "schema_version"


def _with(path_value_pairs):
    m = base_manifest()
    for keys, value in path_value_pairs:
        node = m
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return m


def test_file_size_bounds_are_inclusive():
    for ok in (0, 1 << 50):
        Manifest.from_dict(_with([(("files", "model.onnx", "bytes"), ok)]))
    for bad in (-1, (1 << 50) + 1):
        with pytest.raises(ManifestFieldError) as e:
            Manifest.from_dict(_with([(("files", "model.onnx", "bytes"), bad)]))
        assert e.value.field == "files['model.onnx'].bytes"
        assert e.value.problem == f"must be an integer in [0, {1 << 50}], got {bad!r}"


def test_symbolic_dimension_length_bounds():
    m = base_manifest()
    m["inputs"][0]["shape"][0] = "N" * 64
    m["outputs"][0]["shape"][0] = m["outputs"][1]["shape"][0] = "N" * 64
    Manifest.from_dict(m)
    for bad in ("", "N" * 65):
        m = base_manifest()
        m["inputs"][0]["shape"][0] = bad
        with pytest.raises(ManifestFieldError) as e:
            Manifest.from_dict(m)
        assert e.value.field == "inputs[0].shape[0]"


def test_file_name_length_and_components():
    def entry(name):
        m = base_manifest()
        m["files"][name] = {"sha256": "ab" * 32, "bytes": 1}
        return m

    Manifest.from_dict(entry("d" * 255))
    Manifest.from_dict(entry("sub/dir/file.bin"))
    for bad in ("d" * 256, "a/./b", "a/../b", "a\\b", "/abs", ""):
        with pytest.raises(ManifestFieldError) as e:
            Manifest.from_dict(entry(bad))
        assert e.value.field == f"files[{bad!r}]", bad
        assert "outside the bundle" in e.value.problem


def test_duplicate_class_names_name_the_class_names_field():
    m = base_manifest()
    m["class_names"] = ["caf\u00e9", "cafe\u0301", "dog"]  # equal after NFC
    with pytest.raises(ManifestFieldError) as e:
        Manifest.from_dict(m)
    assert e.value.field == "class_names"
    with pytest.raises(ManifestFieldError) as e:
        mf.check_unique_names(["a", "a"])
    assert e.value.field == "class_names"


# ---- the bytes the digest covers ----------------------------------------------------------


def test_dumps_writes_one_format():
    m = base_manifest()
    m["class_names"][0] = "caf\u00e9"
    text = mf.dumps(m)
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert "caf\u00e9" in text and "\\u00e9" not in text  # UTF-8, not escapes: names are readable and NFC-checked
    assert '\n  "schema_version": ' in text  # two-space indent, one key per line
    assert json.loads(text) == m
    m["alpha"] = float("nan")
    with pytest.raises(ValueError):
        mf.dumps(m)
