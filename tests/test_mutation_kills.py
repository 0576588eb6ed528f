"""Tests that kill the mutants bench/mutation.sh found surviving in the bundle contract (manifest, reader,
signing, engine selection): which field an error names, exact bounds, the manifest's byte format.

Each assertion is a behaviour a user relies on: the one-line error names the field that is wrong (so it
can be fixed), a limit admits its own value and refuses the next, the manifest text the digest covers is
written one way."""

from __future__ import annotations

import json
import numpy as np
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
        with pytest.raises(ManifestFieldError, match=r"is older than this clap-edge reads .*re-export the bundle") as e:
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
    m["outputs"][0]["shape"][0] = "N" * 64  # schema 4: one output, the embedding
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
    m["class_names"] = ["cat", "dog", "cat"]
    with pytest.raises(ManifestFieldError) as e:
        Manifest.from_dict(m)
    assert e.value.field == "class_names"
    m["class_names"] = ["caf\u00e9", "cafe\u0301", "dog"]  # equal after NFC: the non-NFC spelling is refused first
    with pytest.raises(ManifestFieldError) as e:
        Manifest.from_dict(m)
    assert e.value.field == "class_names[1]"
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


# ---- engine selection ---------------------------------------------------------------------


def _engine_bundle(runtime_bundle, tmp_path, specs):
    """A copy of the tiny bundle with placeholder engines: specs = [(device, precision, library_version)]."""
    import hashlib
    import shutil

    from clap_edge.export.bundle import Bundle
    from clap_edge.export.bundle.writer import add_to_bundle
    from test_engines import sidecar

    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    sha = Bundle.open(root).manifest.sha256("model.onnx")
    entries, files = [], {}
    for device, precision, version in specs:
        plan = f"plan {device.name} {precision}".encode()
        s = sidecar(device, precision=precision, sha=sha, version=version,
                    engine_sha=hashlib.sha256(plan).hexdigest())
        side = s.file.removesuffix(".plan") + ".json"
        files[s.file], files[side] = plan, json.dumps(s.to_json()).encode()
        entries.append(s.manifest_entry(side))
    add_to_bundle(root, files, engines=entries)
    return Bundle.open(root)


def _runner_here(kind: str, hosts, version):
    from clap_edge.runtime.backends.aoti.runner import AotiRunner
    from clap_edge.runtime.backends.tensorrt.runner import TensorRTRunner

    base = {"tensorrt": TensorRTRunner, "aoti": AotiRunner}[kind]

    class Here(base):
        @classmethod
        def candidate_hosts(cls):
            return list(hosts)

        @classmethod
        def library_version(cls):
            return version

    return Here


def test_supports_checks_kind_version_and_skips_only_the_bad_sidecar(runtime_bundle, tmp_path):
    from test_engines import A100, H100

    bundle = _engine_bundle(runtime_bundle, tmp_path, [(A100, "fp16", "10.8.0"), (H100, "fp16", "10.8.0"),
                                                       (H100, "fp32", "10.8.0")])
    assert _runner_here("tensorrt", [H100], "10.8.0").supports(bundle, "fp16")
    assert _runner_here("tensorrt", [H100], "10.8.0").supports(bundle, "fp32")
    assert not _runner_here("tensorrt", [H100], "10.9.0").supports(bundle, "fp16")  # built with another TensorRT
    assert not _runner_here("aoti", [H100], "10.8.0").supports(bundle, "fp32")  # a TensorRT engine is not AOTI's
    # the first engine's sidecar is damaged: the second still counts
    first = bundle.manifest.engines[0].sidecar
    (bundle.root / first).write_text("{}")
    assert _runner_here("tensorrt", [H100], "10.8.0").supports(Bundle_reopen(bundle), "fp16")
    with pytest.raises(Exception, match="has no precision 'fp64'"):
        _runner_here("tensorrt", [H100], "10.8.0").supports(bundle, "fp64")


def Bundle_reopen(bundle):
    from clap_edge.export.bundle import Bundle

    return Bundle.open(bundle.root)


def test_selection_returns_the_entry_it_chose_and_explains_every_host(runtime_bundle, tmp_path):
    from clap_edge.export.bundle.engines import EngineMismatchError, select_engine
    from test_engines import A100, H100, ORIN

    bundle = _engine_bundle(runtime_bundle, tmp_path, [(H100, "fp16", "10.8.0"), (H100, "int8", "10.8.0")])
    choice = select_engine(bundle, "tensorrt", "fp16", [A100, H100], "10.8.0")
    assert choice.entry == bundle.manifest.engines[0] and choice.sidecar.precision == "fp16"
    with pytest.raises(EngineMismatchError) as e:
        select_engine(bundle, "tensorrt", "fp16", [A100, ORIN], "10.8.0")
    fp16 = bundle.manifest.engines[0].file
    int8 = bundle.manifest.engines[1].file
    assert str(e.value) == (
        f"{bundle.root}: no tensorrt fp16 engine fits this machine (NVIDIA A100-SXM4-40GB (compute capability 8.0)"
        f" / Orin (compute capability 8.7), tensorrt 10.8.0); found: {fp16} (built for compute capability 9.0 "
        f"(NVIDIA H100 80GB HBM3), this GPU is 8.0 (NVIDIA A100-SXM4-40GB); built for compute capability 9.0 "
        f"(NVIDIA H100 80GB HBM3), this GPU is 8.7 (Orin)); {int8} (int8, not fp16)")
    with pytest.raises(EngineMismatchError) as e:
        select_engine(bundle, "tensorrt", "int8", [], None)
    assert f"fits this machine (no device); found: {int8} ()" in str(e.value) or "(no device)" in str(e.value)
    assert "(no device)" in str(e.value) and ", tensorrt" not in str(e.value)


def test_stale_engine_message_quotes_12_hex_digits(runtime_bundle, tmp_path):
    from clap_edge.export.bundle.engines import stale_reason
    from test_engines import H100, sidecar

    bundle = _engine_bundle(runtime_bundle, tmp_path, [])
    s = sidecar(H100, sha="0123456789abcdef" * 4)
    assert stale_reason(bundle, s) == "built from a different model.onnx (sha256 0123456789ab...)"


def test_engine_entries_of_a_bundle_without_engines_and_an_entry_without_sidecar(runtime_bundle, tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from clap_edge.core.errors import BundleError
    from clap_edge.export.bundle import Bundle
    from clap_edge.export.bundle.engines import engine_entries
    from clap_edge.export.bundle.manifest import EngineEntry

    plain = Bundle.open(runtime_bundle)
    assert tuple(engine_entries(plain)) == () and tuple(engine_entries(plain, "tensorrt")) == ()
    bad = SimpleNamespace(label="b", manifest=replace(plain.manifest, engines=(EngineEntry("e.plan", "tensorrt", "fp16"),)))
    with pytest.raises(BundleError, match=r"^b: manifest engines entry for 'e.plan' names no sidecar"):
        engine_entries(bad)


def test_sidecar_that_is_not_json_names_its_file(runtime_bundle, tmp_path):
    import hashlib

    from clap_edge.core.errors import BundleError
    from clap_edge.export.bundle.engines import load_sidecar
    from clap_edge.export.bundle.writer import write_manifest
    from test_engines import H100

    bundle = _engine_bundle(runtime_bundle, tmp_path, [(H100, "fp16", "10.8.0")])
    entry = bundle.manifest.engines[0]
    data = b"{not json"
    (bundle.root / entry.sidecar).write_bytes(data)
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    manifest["files"][entry.sidecar].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    write_manifest(bundle.root, manifest)
    with pytest.raises(BundleError) as e:
        load_sidecar(Bundle_reopen(bundle), entry)
    assert str(e.value).startswith(f"{bundle.label}/{entry.sidecar}: engine sidecar is not valid JSON (")


def test_cpu_engine_isa_matching():
    from clap_edge.export.bundle.engines import DeviceInfo, mismatch
    from test_engines import sidecar

    host = DeviceInfo("cpu", "Xeon", arch="x86_64", flags=("avx2", "fma", "avx512_vnni"))
    plain = sidecar(DeviceInfo("cpu", "Xeon", arch="x86_64", isa=None), engine="aoti", version="2.5.0")
    assert mismatch(plain, host, "2.5.0") is None  # no ISA recorded: nothing to lack
    vnni = sidecar(DeviceInfo("cpu", "Xeon", arch="x86_64", isa="avx2 avx512_vnni"), engine="aoti", version="2.5.0")
    assert mismatch(vnni, host, "2.5.0") is None  # a token that is its own cpuinfo flag
    lacking = DeviceInfo("cpu", "Core", arch="x86_64", flags=("avx2", "fma"))
    assert mismatch(vnni, lacking, "2.5.0") == "compiled for avx2 avx512_vnni, this CPU lacks avx512_vnni"


def test_device_round_trip_keeps_arch_and_isa_and_defaults_the_name():
    from clap_edge.export.bundle.engines import DeviceInfo

    cpu = DeviceInfo("cpu", "Xeon", arch="x86_64", isa="avx512 amx_tile")
    assert DeviceInfo.from_json(cpu.to_json()) == cpu
    assert DeviceInfo.from_json({"type": "cuda"}).name == ""


def test_same_version_is_symmetric():
    from clap_edge.export.bundle.engines import same_version

    assert same_version("2.5.0", "2.5.0+cu124") and same_version("2.5.0+cu124", "2.5.0")
    assert not same_version("2.5.0+cpu", "2.5.0+cu124")


def test_run_in_chunks_pads_short_tails_and_keeps_float32():
    from clap_edge.runtime.backends.engines import plan_chunks, run_in_chunks

    assert plan_chunks(1, 1, 4) == [(0, 1, 1)]
    with pytest.raises(ValueError, match=r"cannot plan a batch of 0 for an engine profile \[1, 4\]"):
        plan_chunks(0, 1, 4)
    seen = []

    def engine(x):  # an engine for batch range [4, 8]: records what it was given; float64 embedding out
        seen.append((x.shape, x.dtype))
        assert 4 <= len(x) <= 8
        return x.reshape(len(x), -1).astype(np.float64) + 1

    batch = np.arange(11 * 3, dtype=np.float32).reshape(11, 3)
    out = run_in_chunks(batch, 4, 8, engine)
    assert seen == [((8, 3), np.float32), ((4, 3), np.float32)]  # the 3-row tail padded to 4 with zeros
    assert out.dtype == np.float32 and out.shape == (11, 3)  # the padding rows are dropped
    np.testing.assert_array_equal(out, batch + 1)


# ---- signing ----------------------------------------------------------------------------------


def test_password_protected_key_signs_with_its_password(runtime_bundle, tmp_path):
    pytest.importorskip("model_signing")
    import shutil

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from clap_edge.core.errors import BundleError
    from clap_edge.export.bundle.signing import sign_bundle, verify_signature

    root = tmp_path / "b"
    shutil.copytree(runtime_bundle, root)
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.BestAvailableEncryption(b"s3cret")))
    (tmp_path / "k.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    for wrong in (None, "nope"):
        with pytest.raises(BundleError) as e:
            sign_bundle(root, tmp_path / "k.pem", password=wrong)
        assert str(e.value).startswith(f"{tmp_path / 'k.pem'}: not a usable elliptic-curve private key PEM (")
    sign_bundle(root, tmp_path / "k.pem", password="s3cret")
    assert verify_signature(root, [tmp_path / "k.pub"]).key_path == str(tmp_path / "k.pub")
    with pytest.raises(BundleError, match=r"^.*: sign a bundle directory \(unpack a \.tar first"):
        sign_bundle(root / "manifest.json", tmp_path / "k.pem", password="s3cret")


def test_every_optional_section_and_unknown_key_survives_a_round_trip():
    """Fields the runtime does not interpret (drift, extra head / model keys, pretrained) are kept, not dropped:
    re-writing a manifest must not lose what the exporter measured."""
    m = base_manifest()
    m["model"]["pretrained"] = "toyworld"
    m["model"]["source"] = "hub"  # an unknown model key
    m["model"]["head"]["dropout"] = 0.1  # an unknown head key
    m["drift"] = {"int8": {"agreement": 0.99, "min_domain_agreement": 0.98}}
    assert Manifest.from_dict(m).to_dict() == m
    minimal = base_manifest()
    for key in ("templates", "variants", "alpha", "clap_edge_version", "drift"):
        minimal.pop(key, None)
    spec = Manifest.from_dict(minimal)
    assert tuple(spec.templates) == () and spec.variants == {} and spec.alpha == 0.0 and spec.drift is None


def test_swapped_engine_and_hostless_reasons(runtime_bundle, tmp_path):
    import hashlib

    from clap_edge.core.errors import BundleError
    from clap_edge.export.bundle.engines import digest_reason, load_sidecar, usable_reason
    from clap_edge.export.bundle.writer import write_manifest
    from test_engines import H100, sidecar

    bundle = _engine_bundle(runtime_bundle, tmp_path, [(H100, "fp16", "10.8.0")])
    entry = bundle.manifest.engines[0]
    good = load_sidecar(bundle, entry)
    assert usable_reason(bundle, good, [H100], "10.8.0") is None
    assert usable_reason(bundle, good, [], "10.8.0") == "no device here"
    listed = bundle.manifest.sha256(entry.file)
    swapped = sidecar(H100, sha=good.source_sha256, engine_sha="ab" * 32)
    assert digest_reason(bundle, swapped) == (f"its bytes (sha256 {listed[:12]}...) are not the engine its sidecar "
                                              f"records (engine_sha256 abababababab...): it was replaced; rebuild it")
    data = b"{}"  # valid JSON, not a sidecar: the error names the sidecar file
    (bundle.root / entry.sidecar).write_bytes(data)
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    manifest["files"][entry.sidecar].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    write_manifest(bundle.root, manifest)
    with pytest.raises(BundleError) as e:
        load_sidecar(Bundle_reopen(bundle), entry)
    assert str(e.value).startswith(f"{bundle.label}/{entry.sidecar}: ")
