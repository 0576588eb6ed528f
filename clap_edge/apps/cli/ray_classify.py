"""``clap-edge classify --ray``: the Ray Data path of ``classify`` (kept apart so classify.py stays small)."""

from __future__ import annotations

import json
import sys

import click

from clap_edge.apps.cli.exitcodes import SOME_FAILED
from clap_edge.core.errors import ClapEdgeError


def classify_on_ray(bundle, files, use_ray, address, out, backend, threads, actors, batch_size, top_k, workers,
                    embeddings, as_json, skipped=(), trusted_keys=(), keep_errors=False) -> None:
    """``skipped``: entries the folder walk could not read (reported by the caller); they make the exit code 1.

    Exit codes: 0 all classified; 1 some images failed (error rows); 2 bad input, a bundle that fails its
    checks (``trusted_keys`` are checked on the bytes every actor loads), or an ``--out`` that cannot be used:
    another run holds it (its lock), a folder, a /proc path, an unwritable folder, a full disk."""
    if not use_ray:
        raise ClapEdgeError("--address, --out, --embeddings and --keep-errors go with --ray")
    if out is None:
        raise ClapEdgeError("--ray needs --out results.parquet")
    from clap_edge.runtime.scale.ray_data import classify

    result = classify([str(f) for f in files], bundle, backend=backend, threads=threads, actors=actors,
                      batch_size=batch_size, top_k=top_k, embeddings=embeddings, out=out, decode_workers=workers,
                      address=address, trusted_keys=tuple(trusted_keys), keep_errors=keep_errors)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        retried = f", {result.retried} earlier errors retried" if result.retried else ""
        click.echo(f"{out}: {result.rows} rows ({result.classified} classified, {result.errors} errors, "
                   f"{result.skipped} already done{retried}) in {result.seconds:.1f}s", err=True)
    if result.errors or skipped:
        click.echo(f"{result.errors + len(skipped)} of {len(files) + len(skipped)} images could not be classified "
                   f"(see the error column and the lines above)", err=True)
        sys.exit(SOME_FAILED)
