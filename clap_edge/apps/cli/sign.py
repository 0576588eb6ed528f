"""``clap-edge sign`` / ``verify`` / ``keygen`` (signed bundles) and ``clean`` (debris of killed runs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from clap_edge.apps.cli.exitcodes import SOME_FAILED


@click.command("sign")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="elliptic-curve private key PEM (P-256/384/521), e.g. from `clap-edge keygen`.")
@click.option("--password-env", default=None, metavar="VAR",
              help="environment variable holding the key's password, if it is encrypted.")
def sign(bundle, key, password_env):
    """Sign every file of BUNDLE (a directory), manifest included, into BUNDLE/bundle.sig.

    Uses the OpenSSF model-signing format (offline, key-based). Sign after the last change
    to the bundle; pack it as a .tar afterwards if you ship tars.

    \b
    Example:
      clap-edge keygen signer && clap-edge sign bundle/ --key signer.pem
    """
    from clap_edge.core.errors import ClapEdgeError
    from clap_edge.export.bundle import Bundle
    from clap_edge.export.bundle.signing import sign_bundle

    password = None
    if password_env:
        if password_env not in os.environ:
            raise ClapEdgeError(f"--password-env {password_env}: that variable is not set")
        password = os.environ[password_env]
    with Bundle.open(bundle, verify=False) as opened:  # a bundle that does not open is not worth signing
        bad = {n: p for n, p in opened.verify_all().items() if p != "ok"}
    if bad:
        raise ClapEdgeError(f"{bundle}: not signed, the bundle is damaged: {next(iter(bad.values()))}")
    fingerprint = sign_bundle(bundle, key, password=password)
    click.echo(f"signed {bundle} (key sha256:{fingerprint[:16]}...)")


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--trusted-key", "trusted_keys", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False), help="public key PEM to trust (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object.")
def verify(bundle, trusted_keys, as_json):
    """Check BUNDLE (directory or .tar): a trusted key's signature over every file, and each file's sha256.

    Exit 0 when it verifies; 2 with one line saying what is wrong (unsigned, signed by another
    key, a file added, removed or changed since signing).

    \b
    Example:
      clap-edge verify bundle.tar --trusted-key signer.pub
    """
    from clap_edge.export.bundle.signing import verify_bundle

    check = verify_bundle(bundle, list(trusted_keys))
    result = {"bundle": str(bundle), "verified": True, "key_fingerprint": check.key_fingerprint,
              "key": check.key_path, "files": len(check.digests)}
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{bundle}: signature OK, {len(check.digests)} files, signed by key "
                   f"sha256:{check.key_fingerprint[:16]}... ({check.key_path})")


@click.command("keygen")
@click.argument("prefix", type=click.Path(dir_okay=False))
@click.option("--curve", type=click.Choice(["p256", "p384", "p521"]), default="p256", show_default=True)
def keygen(prefix, curve):
    """Write a new elliptic-curve key pair: PREFIX.pem (private, mode 0600) and PREFIX.pub.

    \b
    Example:
      clap-edge keygen signer
    """
    from clap_edge.core.errors import BackendUnavailableError, OutputError

    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise BackendUnavailableError("keygen needs the cryptography package: pip install 'clap-edge[sign]'") from None
    from clap_edge.core.io import atomic_path

    private, public = Path(f"{prefix}.pem"), Path(f"{prefix}.pub")
    for p in (private, public):
        if p.exists():
            raise OutputError(f"{p} already exists; not overwriting a key")
    key = ec.generate_private_key({"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[curve])
    with atomic_path(public) as tmp:
        tmp.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    fd = os.open(private, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    click.echo(f"wrote {private} (keep it secret) and {public} (give it to whoever verifies)")


@click.command("clean")
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--dry-run", is_flag=True, help="list what would be removed, remove nothing.")
def clean(folders, dry_run):
    """Remove staging folders, temp files and locks left by killed clap-edge runs.

    Looks in FOLDERS (default: the current folder and the system temp folder), not below them.
    Only entries whose process is gone (on this machine) are removed; running work is left alone.

    \b
    Example:
      clap-edge clean exports/ --dry-run
    """
    import tempfile

    from clap_edge.core.io import clean_stale

    folders = folders or (".", tempfile.gettempdir())
    found = [d for folder in folders for d in clean_stale(folder, dry_run=dry_run)]
    for d in found:
        click.echo(f"{'would remove' if dry_run else 'removed' if d.removed else 'could not remove'} "
                   f"{d.path} ({d.reason})")
    if not found:
        click.echo(f"nothing to clean in {', '.join(map(str, folders))}")
    if any(not d.removed for d in found) and not dry_run:
        sys.exit(SOME_FAILED)


COMMANDS = [sign, verify, keygen, clean]
