"""Inputs that used to end in a traceback (issue 17): each now gives one line naming the file and exit 2.

A 5000-digit integer in a manifest, an RSA (or other non-EC) key to sign / verify, a full disk while
exporting or signing (ENOSPC simulated), an output under /proc, a corrupt calibration.npy."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clap_edge.apps.cli import main
from clap_edge.core.errors import BundleError, os_error_line
from clap_edge.export.bundle import Bundle

pytest.importorskip("cryptography")


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, *needles):
    """Exit 2, no traceback, one ``error:`` line holding every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture()
def bundle(runtime_bundle, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    return root


def _rewrite(root: Path, name: str, data: bytes) -> None:
    """Replace a listed file and keep the manifest's digests in step (the semantic check is what is tested)."""
    from clap_edge.export.bundle.writer import write_manifest

    (root / name).write_bytes(data)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    write_manifest(root, manifest)


# ---- numbers ------------------------------------------------------------------------------


def test_5000_digit_integer_in_the_manifest_is_one_line(bundle):
    text = (bundle / "manifest.json").read_text()
    manifest = json.loads(text)
    manifest["schema_version"] = 2  # placeholder, replaced textually below so the digits survive json.dumps
    raw = json.dumps(manifest).replace('"schema_version": 2', '"schema_version": ' + "9" * 5000, 1)
    (bundle / "manifest.json").write_text(raw)
    (bundle / "manifest.sha256").write_text(hashlib.sha256(raw.encode()).hexdigest() + "\n")
    with pytest.raises(BundleError, match=r"an integer of 5,000 digits"):
        Bundle.open(bundle)
    _one_line(_cli("inspect", bundle), str(bundle), "manifest.json", "5,000 digits")


@pytest.mark.parametrize("option", ["--top-k", "--batch-size"])
def test_5000_digit_integer_option_is_refused_by_the_cli(bundle, option):
    result = _cli("classify", bundle, bundle / "manifest.json", option, "9" * 5000)
    assert result.exit_code == 2 and "Traceback" not in result.output and option in result.output


# ---- keys ---------------------------------------------------------------------------------


def _rsa_pair(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = tmp_path / "rsa.pem", tmp_path / "rsa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_rsa_key_to_sign_or_verify_is_one_line(bundle, tmp_path):
    pytest.importorskip("model_signing")
    private, public = _rsa_pair(tmp_path)
    _one_line(_cli("sign", bundle, "--key", private), "rsa.pem", "RSA", "elliptic-curve")
    assert not (bundle / "bundle.sig").exists()
    assert _cli("keygen", tmp_path / "ec").exit_code == 0
    assert _cli("sign", bundle, "--key", tmp_path / "ec.pem").exit_code == 0
    _one_line(_cli("verify", bundle, "--trusted-key", public), "rsa.pub", "RSA", "elliptic-curve")
    _one_line(_cli("classify", bundle, bundle / "manifest.json", "--trusted-key", public), "rsa.pub", "RSA")


def test_unsupported_curve_is_refused(bundle, tmp_path):
    pytest.importorskip("model_signing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256K1())
    (tmp_path / "k1.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    _one_line(_cli("sign", bundle, "--key", tmp_path / "k1.pem"), "k1.pem", "secp256k1 is not supported")


# ---- full disk and /proc -------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(args[0]) if args else None)


def test_full_disk_while_signing_is_one_line_and_leaves_no_signature(bundle, tmp_path, monkeypatch):
    pytest.importorskip("model_signing")
    from clap_edge.export.bundle import signing

    assert _cli("keygen", tmp_path / "ec").exit_code == 0
    before = sorted(p.name for p in bundle.parent.iterdir())
    monkeypatch.setattr(signing.os, "replace", _enospc)  # the staged signature cannot be moved into place
    _one_line(_cli("sign", bundle, "--key", tmp_path / "ec.pem"), "bundle.sig", "No space left on device",
              "the disk is full")
    assert not (bundle / "bundle.sig").exists()
    assert sorted(p.name for p in bundle.parent.iterdir()) == before  # no staged debris
    assert not any(p.name.startswith(".") for p in bundle.iterdir())


def test_full_disk_while_exporting_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import numpy

    out = tmp_path / "out" / "b"
    monkeypatch.setattr(numpy, "save", _enospc)  # the first array the exporter writes hits a full disk
    result = _cli("export", "--model", "clap-edge-tiny", "--classes", "a,b", "--no-head", "--out", out)
    _one_line(result, "No space left on device", "the disk is full")
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == []  # staging folder and lock removed


def test_output_under_proc_is_one_line():
    result = _cli("export", "--model", "clap-edge-tiny", "--classes", "a,b", "--no-head", "--out",
                  "/proc/clap-edge-test-out")
    _one_line(result, "/proc/clap-edge-test-out", "cannot write it here")


def test_os_error_line_names_the_path_and_says_why():
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == \
        "/x/y: No space left on device (the disk is full)"
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/a", None, "/b")) == \
        "/a -> /b: Read-only file system"


# ---- calibration.npy ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x93NUMPY\x01\x00garbage" * 3, b"not numpy at all"], ids=["header", "magic"])
def test_corrupt_calibration_npy_is_one_line(bundle, data):
    _rewrite(bundle, "calibration.npy", data)
    with pytest.raises(BundleError, match=r"calibration\.npy('? is unreadable|' is not a \.npy file)"):
        Bundle.open(bundle).calibration()
    _one_line(_cli("bench", bundle, "--backends", "onnxruntime", "--batch-sizes", "1", "--no-ceiling"),
              str(bundle), "calibration.npy")


def test_calibration_npy_of_the_wrong_shape_is_refused(bundle, tmp_path):
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 7), dtype=np.float32))
    _rewrite(bundle, "calibration.npy", buf.getvalue())
    with pytest.raises(BundleError, match=r"calibration\.npy must be a finite float batch \[n, 3, H, W\]"):
        Bundle.open(bundle).calibration()
