"""Signed bundles with the OpenSSF ``model-signing`` library (elliptic-curve keys, offline).

The signature (``bundle.sig``, a sigstore bundle) covers every file of the bundle directory,
``manifest.json`` and ``manifest.sha256`` included; only ``bundle.sig`` itself is left out.
Files are hashed with sha256, the same digests the manifest lists, so a verified signature also
verifies each listed file and the bundle does not hash it a second time.

``model_signing`` is imported only here, inside the functions: the base runtime install does
not need it (``pip install 'clap-edge[sign]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from clap_edge.core.errors import BackendUnavailableError, BundleError, OutputError, first_line, os_error_line
from clap_edge.core.io import atomic_path, read_regular
from clap_edge.export.bundle.names import SIGNATURE_FILE

MAX_SIGNATURE_BYTES = 64 << 20
__all__ = ["sign_bundle", "verify_signature", "verify_bundle", "signature_key_id", "key_fingerprint",
           "SignatureCheck"]


@dataclass
class SignatureCheck:
    """A verified signature: which trusted key signed, and the sha256 it vouches for, per file."""

    key_fingerprint: str
    key_path: str
    digests: dict[str, str] = field(default_factory=dict)


def _model_signing():
    try:
        import model_signing  # noqa: F401
        from model_signing import hashing, signing, verifying
    except ImportError as e:
        raise BackendUnavailableError(
            f"signed bundles need the model-signing package ({e.name or e}): pip install 'clap-edge[sign]'"
        ) from None
    return hashing, signing, verifying


def _hashing_config(hashing):
    # sha256 per file (the manifest's digests), the signature file itself left out, no git paths skipped
    return (hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
            .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False))


def key_fingerprint(public_pem: bytes, path: str | os.PathLike = "public key") -> str:
    """sha256 of the key's SubjectPublicKeyInfo PEM: the hint model-signing records in a signature.

    Refuses (BundleError naming ``path``) a key that is not elliptic-curve on a supported curve."""
    from cryptography.hazmat.primitives import serialization

    key = _require_ec(serialization.load_pem_public_key(public_pem), path, "public")
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing's elliptic-key signer takes


def _require_ec(key, path: str | os.PathLike, kind: str):
    """``key`` if it is an elliptic-curve key on a supported curve; else one line naming the file and its type
    (model-signing assumes EC and fails deep inside with an AttributeError on, e.g., an RSA key)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    expected = ec.EllipticCurvePrivateKey if kind == "private" else ec.EllipticCurvePublicKey
    if not isinstance(key, expected):
        found = type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "") or "unknown"
        raise BundleError(f"{path}: the {kind} key is {found}, not elliptic-curve; signed bundles use EC keys "
                          f"(P-256/384/521, e.g. from `clap-edge keygen`)")
    if key.curve.name not in SUPPORTED_CURVES:
        raise BundleError(f"{path}: elliptic curve {key.curve.name} is not supported (use P-256, P-384 or P-521)")
    return key


def _check_private_key(path: str | os.PathLike, password: str | None) -> None:
    from cryptography.hazmat.primitives import serialization

    try:
        pem = read_regular(Path(path), 1 << 20)
        key = serialization.load_pem_private_key(pem, password=password.encode() if password else None)
    except (ValueError, TypeError, OSError) as e:
        raise BundleError(f"{path}: not a usable elliptic-curve private key PEM ({first_line(e)})") from None
    _require_ec(key, path, "private")


def sign_bundle(bundle_dir: str | os.PathLike, private_key: str | os.PathLike, password: str | None = None) -> str:
    """Sign every file of ``bundle_dir`` into ``bundle.sig``; returns the signing key's fingerprint."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: sign a bundle directory (unpack a .tar first, sign, then pack it)")
    hashing, signing, _ = _model_signing()
    _check_private_key(private_key, password)
    try:
        cfg = signing.Config().use_elliptic_key_signer(private_key=Path(private_key),  # model-signing takes bytes
                                                        password=password.encode() if password else None)
    except (ValueError, TypeError, OSError) as e:
        raise BundleError(f"{private_key}: not a usable elliptic-curve private key PEM ({e})") from None
    cfg.set_hashing_config(_hashing_config(hashing))
    try:
        _write_signature(cfg, root)
    except OSError as e:  # a full disk or a read-only folder: one line; the old bundle.sig (if any) is kept
        raise OutputError(f"{root / SIGNATURE_FILE}: cannot write the signature ({os_error_line(e)})") from None
    return signature_key_id(root) or ""


def _write_signature(cfg, root: Path) -> None:
    with atomic_path(root / SIGNATURE_FILE) as tmp:
        tmp.unlink()  # hashed as a bundle file otherwise (it sits in the folder while signing)
        staged = root.parent / tmp.name
        try:
            cfg.sign(root, staged)
            os.replace(staged, tmp)
        finally:
            if staged.exists():
                staged.unlink()


def signature_key_id(bundle_dir: str | os.PathLike) -> str | None:
    """The key fingerprint a bundle's signature names, *unverified* (for display); None if unsigned."""
    path = Path(bundle_dir) / SIGNATURE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(read_regular(path, MAX_SIGNATURE_BYTES))
        hint = data["verificationMaterial"]["publicKey"]["hint"]
    except (ValueError, KeyError, TypeError, OSError):
        return "unreadable"
    return str(hint)


def verify_signature(bundle_dir: str | os.PathLike, trusted_keys: Iterable[str | os.PathLike],
                     label: str | None = None) -> SignatureCheck:
    """Check ``bundle.sig`` against each trusted public key; the first that verifies wins.

    Raises BundleError (one line) for an unsigned bundle, a signature no trusted key made, or
    any file added, removed or changed since signing."""
    root = Path(bundle_dir)
    label = label or str(root)
    keys = [Path(k) for k in trusted_keys]
    if not keys:
        raise BundleError(f"{label}: no trusted keys given")
    sig = root / SIGNATURE_FILE
    if not sig.is_file():
        raise BundleError(f"{label}: unsigned bundle refused (no {SIGNATURE_FILE}; trusted keys are configured): "
                          f"sign it with `clap-edge sign {label} --key KEY`")
    hashing, _, verifying = _model_signing()
    problems = []
    for key in keys:
        try:
            pem = read_regular(key, 1 << 20)
            fingerprint = key_fingerprint(pem, key)
        except (OSError, ValueError, TypeError) as e:
            raise BundleError(f"{key}: not a readable public key PEM ({first_line(e)})") from None
        recorder = _recording_config(hashing)
        cfg = verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(recorder)
        try:
            cfg.verify(root, sig)
        except Exception as e:  # model-signing raises ValueError, cryptography errors, protobuf errors
            problems.append((key, _short(e)))
            continue
        digests = {rd.identifier: rd.digest.digest_hex for rd in recorder.last.resource_descriptors()}
        return SignatureCheck(fingerprint, str(key), digests)
    if len(problems) == 1 or all(p == problems[0][1] for _, p in problems):
        raise BundleError(f"{label}: signature check failed: {problems[0][1]}")
    detail = "; ".join(f"{k.name}: {p}" for k, p in problems)
    raise BundleError(f"{label}: no trusted key verifies {SIGNATURE_FILE} ({detail})")


def _recording_config(hashing):
    """A hashing config that keeps the digests it computed, so the bundle need not hash the files again."""

    class Recording(type(_hashing_config(hashing))):
        last = None

        def hash(self, model_path, *, files_to_hash=None):
            self.last = super().hash(model_path, files_to_hash=files_to_hash)
            return self.last

    cfg = Recording().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
    return cfg.set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Signature mismatch" in text:
        return "the bundle's files differ from what was signed: " + text.split(":", 1)[1].strip()[:400]
    if type(e).__name__ in ("InvalidSignature",) or "verif" in text.lower() or "key" in text.lower():
        return f"{SIGNATURE_FILE} was not made by this trusted key ({type(e).__name__}: {text[:200]})"
    return f"{type(e).__name__}: {text[:300]}"


def verify_bundle(path: str | os.PathLike, trusted_keys: Iterable[str | os.PathLike]) -> SignatureCheck:
    """Open ``path`` (directory or .tar) with full checks and a trusted signature; for servers and scripts.

    Every file is checked (signature, then each listed sha256); returns the signature check."""
    from clap_edge.export.bundle.reader import Bundle

    with Bundle.open(path, trusted_keys=list(trusted_keys)) as bundle:
        report = bundle.verify_all()
        bad = {n: p for n, p in report.items() if p != "ok"}
        if bad:
            name, problem = next(iter(bad.items()))
            raise BundleError(f"{bundle.label}: {problem}")
        assert bundle.signature is not None
        return bundle.signature

