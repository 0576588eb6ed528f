"""``clap-edge classify``: classify image files and folders with a bundle (torch-free for ONNX backends)."""

from __future__ import annotations

import json
import sys

import click

from clap_edge.apps.cli.exitcodes import SOME_FAILED

PROGRESS_MIN_IMAGES = 64  # below this a run is short enough that a bar is only noise


@click.command("classify")
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--backend", default="auto", show_default=True,
              help="auto, onnxruntime, openvino, torch, aoti, tensorrt, ...; name:precision also works "
                   "(onnxruntime:int8).")
@click.option("--precision", default=None,
              help="the backend's precision / model variant: fp32, int8, int8-static, fp16, bf16 (openvino: "
                   "auto, int8). Default: the backend's own.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="images per model call.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="classes reported per image (at most the bundle's class count).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="backend intra-op threads (default: library's).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="decode / preprocess threads that prepare the next batch while one runs.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda[:index] for backends that run on a GPU (torch, aoti, tensorrt; onnxruntime: also tensorrt).")
@click.option("--json", "as_json", is_flag=True, help='one JSON object per line: {"path","labels","scores"} or {"path","error"}.')
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="public key PEM; the bundle must be signed by one of these (repeatable; `clap-edge sign`).")
@click.option("--ray", "use_ray", is_flag=True, help="classify on a Ray cluster (Ray Data) into --out Parquet.")
@click.option("--address", default=None, help="--ray: a running Ray cluster (default: start a local one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="--ray: results Parquet (resumable: paths already in it are skipped).")
@click.option("--actors", type=click.IntRange(min=1), default=2, show_default=True,
              help="--ray: classifier actors (one bundle load each).")
@click.option("--embeddings", is_flag=True, help="--ray: add an embedding column.")
@click.option("--keep-errors", is_flag=True, help="--ray: keep error rows already in --out (default: retry them).")
def classify(bundle, paths, backend, precision, batch_size, top_k, threads, workers, device, as_json, trusted_keys,
             use_ray, address, out, actors, embeddings, keep_errors):
    """Classify images (files, or folders walked recursively) with BUNDLE.

    Exit code 0 when every image was classified, 1 when some could not be (each is reported with
    the reason: undecodable, missing, broken link, symlink loop, not a regular file, unreadable;
    the others are still classified), 2 for a bad bundle or bad arguments. Symbolic links to
    folders are followed; files without an image extension inside folders are counted, not read.

    \b
    Example:
      clap-edge classify bundle/ photos/ extra.jpg --top-k 3 --json
      clap-edge classify bundle.tar photos/ --trusted-key signer.pub
      clap-edge classify bundle/ photos/ --ray --actors 4 --out results.parquet
    """
    from clap_edge.apps.progress import progress_bar
    from clap_edge.core.errors import ClapEdgeError
    from clap_edge.core.images import scan_images
    from clap_edge.runtime.classifier import Classifier

    if precision:
        if backend == "auto":
            raise ClapEdgeError("--precision needs a named --backend (auto picks its own precision)")
        backend = f"{backend.partition(':')[0]}:{precision}"
    scan = scan_images(list(paths))
    files = scan.files
    if not files and not scan.skipped:
        raise ClapEdgeError(f"no image files found under {', '.join(paths)}")
    if use_ray or address or out or embeddings or keep_errors:
        from clap_edge.apps.cli.ray_classify import classify_on_ray

        for skipped in scan.skipped:
            _report_error(str(skipped.path), Exception(skipped.reason), as_json)
        return classify_on_ray(bundle, files, use_ray, address, out, backend, threads, actors, batch_size, top_k,
                               workers, embeddings, as_json, skipped=scan.skipped, trusted_keys=trusted_keys,
                               keep_errors=keep_errors)
    failed = 0
    with Classifier.open(bundle, backend=backend, threads=threads, device=device,
                         trusted_keys=list(trusted_keys) or None) as clf, \
            progress_bar(enabled=len(files) >= PROGRESS_MIN_IMAGES) as progress:
        for skipped in scan.skipped:  # reported first, then the images: none is lost without a word
            failed += 1
            _report_error(str(skipped.path), Exception(skipped.reason), as_json)
        progress("classifying", 0, len(files))
        for path, result in clf.predict_files(files, batch_size=batch_size, workers=workers, top_k=top_k):
            if isinstance(result, Exception):
                failed += 1
                _report_error(path, result, as_json)
            else:
                _report(result, as_json)
            progress("classifying")
    if scan.other_files:
        click.echo(f"note: {len(scan.other_files)} file(s) without an image extension were not read "
                   f"(e.g. {escape_text(str(scan.other_files[0]))}); name a file directly to classify it", err=True)
    if failed:
        total = len(files) + len(scan.skipped)
        click.echo(f"{failed} of {total} images could not be classified", err=True)
        sys.exit(SOME_FAILED)


def _report(pred, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(pred.to_dict(), allow_nan=False))  # predict_files turned NaN into an error
    else:
        best = ", ".join(f"{escape_text(label)} {score:.3f}" for label, score in zip(pred.labels, pred.scores))
        click.echo(f"{escape_text(str(pred.path))}\t{best}")


def _report_error(path: str, error: Exception, as_json: bool) -> None:
    from clap_edge.runtime.batching import error_record

    record = error_record(path, error)  # the serving core's record: the message without its leading path
    if as_json:
        click.echo(json.dumps(record))
    else:
        click.secho(f"{escape_text(path)}\terror: {escape_text(record['error'])}", fg="red", err=True)


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_text(text: str) -> str:
    """A path, label or message for a text-mode line, as the C++ tool writes it (runtime/cpp/tools/json_line.hpp):
    backslash, control characters (C0, DEL, C1), U+2028/U+2029 and undecodable file-name bytes (surrogateescape)
    escaped, so a name holding a newline or a tab cannot forge a record or a column."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:  # a byte of a file name that is not UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o in (0x2028, 0x2029) or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


COMMANDS = [classify]
