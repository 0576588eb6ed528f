"""``clap-edge classes``: change a bundle's classes from words on the device (torch-free: numpy + onnxruntime)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

COMMANDS: list[click.Command] = []


def _names(value: str | None, option: str) -> list[str]:
    """``a,b,c`` or ``@FILE`` (one name a line); blanks around names dropped, empty names refused."""
    from clap_edge.core.errors import ClapEdgeError

    if value is None:
        return []
    if value.startswith("@"):
        try:
            items = Path(value[1:]).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ClapEdgeError(f"{value[1:]}: cannot read the class names for {option} ({e})") from None
    else:
        items = value.split(",")
    names = [n.strip() for n in items]
    if not names or any(not n for n in names):
        raise ClapEdgeError(f"{option} {value!r}: an empty class name (give names as a,b,c or @FILE, one a line)")
    return names


def _templates(path: str | None) -> list[str] | None:
    from clap_edge.core.errors import ClapEdgeError

    if path is None:
        return None
    try:
        lines = [t.strip() for t in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ClapEdgeError(f"{path}: cannot read the templates ({e})") from None
    templates = [t for t in lines if t and not t.startswith("#")]
    if not templates:
        raise ClapEdgeError(f"{path}: no templates (one a line, with {{c}} where the class name goes)")
    return templates


@click.command("classes")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--set", "set_", metavar="NAMES", default=None, help="the new classes: a,b,c or @FILE (one a line).")
@click.option("--add", metavar="NAMES", default=None, help="classes to add (the others keep their embeddings).")
@click.option("--remove", metavar="NAMES", default=None, help="classes to remove.")
@click.option("--templates", "templates_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="prompt templates, one a line with {c} (default: the bundle's).")
@click.option("--out", type=click.Path(), default=None, help="write the changed bundle here (a new directory).")
@click.option("--in-place", is_flag=True, help="change BUNDLE itself (its classes file and manifest).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="sign the new bundle with this private key PEM (otherwise a signature is dropped, with a warning).")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="the text encoder variant that embeds the names.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads.")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object.")
def classes(bundle, set_, add, remove, templates_file, out, in_place, key, precision, threads, as_json):
    """Change BUNDLE's classes from words, with its text encoder (`export --text-encoder`); no torch needed.

    New names are embedded as the export embeds them (each template, normalised, averaged, renormalised);
    only classes.safetensors and the manifest change. Exactly one of --set, --add/--remove.

    \b
    Example:
      clap-edge classes bundle --set "cat,dog,forklift" --out bundle-forklift
      clap-edge classes bundle --add forklift --remove car --in-place --key signer.pem
    """
    import logging

    import numpy as np

    from clap_edge.core.errors import ClapEdgeError
    from clap_edge.export.bundle import Bundle, rewrite_classes
    from clap_edge.runtime.text import TextEncoder

    if (set_ is None) == (add is None and remove is None):
        raise ClapEdgeError("give --set NAMES, or --add / --remove NAMES")
    if in_place == (out is not None):
        raise ClapEdgeError("give --out NEW (a new bundle) or --in-place")
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    templates = _templates(templates_file)
    with Bundle.open(bundle) as opened:
        old = opened.class_names
        old_w, old_b = opened.class_tensors()
        if set_ is not None:
            names, new = _names(set_, "--set"), _names(set_, "--set")
        else:
            added, removed = _names(add, "--add"), _names(remove, "--remove")
            missing = [n for n in removed if n not in old]
            if missing:
                raise ClapEdgeError(f"{bundle}: --remove {missing[0]!r}: no such class (it has: {', '.join(old[:20])}"
                                    f"{', ...' if len(old) > 20 else ''})")
            present = [n for n in added if n in old]
            if present:
                raise ClapEdgeError(f"{bundle}: --add {present[0]!r}: already a class")
            names = [n for n in old if n not in removed] + added
            new = added
        if not names:
            raise ClapEdgeError(f"{bundle}: no classes would be left")
        print(f"embedding {len(new)} classes x {len(templates or opened.manifest.templates or [1])} templates",
              file=sys.stderr)
        with TextEncoder.open(opened, precision=precision, threads=threads) as encoder:
            fresh = encoder.class_embeddings(new, templates) if new else np.zeros((0, opened.embed_dim), np.float32)
        rows = {n: old_w[i] for i, n in enumerate(old)} | dict(zip(new, fresh))
        bias = None
        if old_b is not None and set_ is None:  # kept classes keep their bias; words have none (0)
            kept = {n: old_b[i] for i, n in enumerate(old)}
            bias = np.array([kept.get(n, 0.0) for n in names], np.float32)
        provenance = {"method": "zero-shot-text", "operation": "set" if set_ is not None else "add/remove",
                      "text_encoder": precision, "templates": len(templates or opened.manifest.templates)}
        if templates:
            provenance["template_texts"] = templates
        written = rewrite_classes(opened, None if in_place else out, class_names=names,
                                  class_matrix=np.stack([rows[n] for n in names]), bias=bias, provenance=provenance,
                                  key=key, in_place=in_place)
    result = {"bundle": str(written), "classes": names, "added": [n for n in names if n not in old],
              "removed": [n for n in old if n not in names], "signed": key is not None,
              "wall_s": round(time.perf_counter() - start_wall, 3), "cpu_s": round(time.process_time() - start_cpu, 3)}
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo(f"wrote {written}: {len(names)} classes (+{len(result['added'])} -{len(result['removed'])}) "
                   f"in {result['wall_s']:.2f} s")


COMMANDS.append(classes)
