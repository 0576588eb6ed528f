"""The image side of the conformance suite: generated image files and folder layouts, checked record by record.

A case with a ``files`` block gets OUT/<id>/files/ built from it (in order; parent folders made as needed):
  {"scene": [w, h], "seed": 0, "quality": 90, "mode": "RGB", "exif": {"orientation": 6, "order": "MM", "long": false},
   "claim": [w, h], "truncate": 0.5}   a generated photo (PNG or JPEG by extension); "claim" patches the header
                                       to say w x h, "truncate" keeps that fraction of the bytes
  {"solid": [w, h, [r, g, b]]}         one colour (PNG)
  {"text": "..."} / {"hex": "..."} / {"empty": true}   a file with these bytes
  {"sparse": size, "head_hex": "89504e47"}             a sparse file of size bytes (no disk used)
  {"fifo": true} / {"dir": true} / {"symlink": "target"}
``paths`` (default ["."]) are the CLI's PATHS, relative to files/ ("." is the folder itself).
``expect`` is {"verdict": "per_image", "records": [{"path": "a.png"}, {"path": "b.png", "error": ["substring"]}],
"text": true} -- the JSON records in this order (an accepted one with the reference's labels and scores, computed
from the Python preprocessing and ONNX Runtime run directly on the case's model.onnx), exit 1 if any is an error
(and the last stderr line "E of N images could not be classified"), else 0. "text": the text-mode output must
have one line per accepted record, each path escaped (a name cannot forge a record).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

SCORE_TOL = 1e-4


def exif_tiff(orientation: int, order: str = "II", long: bool = False) -> bytes:
    """A TIFF-structured EXIF block holding only an Orientation tag (SHORT, or LONG when ``long``), in byte
    order ``order`` ("II" little-endian, "MM" big-endian); also used by tests/test_images.py."""
    e = "<" if order == "II" else ">"
    value = struct.pack(e + "I", orientation) if long else struct.pack(e + "HH", orientation, 0)
    return (order.encode() + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1)
            + struct.pack(e + "HHI", 0x0112, 4 if long else 3, 1) + value + struct.pack(e + "I", 0))


def claim_size(data: bytes, w: int, h: int) -> bytes:
    """A JPEG (SOF0) or PNG (IHDR, CRC recomputed) whose header claims w x h (also used by tests/test_images.py)."""
    d = bytearray(data)
    if d[:2] == b"\xff\xd8":
        i = d.index(b"\xff\xc0")
        d[i + 5:i + 9] = struct.pack(">HH", h, w)
    else:
        d[16:24] = struct.pack(">II", w, h)
        d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
    return bytes(d)


def _photo(path: Path, spec: dict[str, Any]) -> bytes:
    from PIL import Image

    from materialize import _scene

    w, h = spec["scene"]
    img = Image.fromarray(_scene(w, h, spec.get("seed", w * 7 + h)))
    if spec.get("mode", "RGB") != "RGB":
        img = img.convert(spec["mode"])
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    kw: dict[str, Any] = {"quality": spec.get("quality", 92)} if jpeg else {}
    if "exif" in spec:
        tiff = exif_tiff(**spec["exif"])
        kw["exif"] = b"Exif\x00\x00" + tiff if jpeg else tiff
    buf = io.BytesIO()
    img.save(buf, "JPEG" if jpeg else "PNG", **kw)
    data = buf.getvalue()
    if "claim" in spec:
        data = claim_size(data, *spec["claim"])
    if "truncate" in spec:
        data = data[: int(len(data) * spec["truncate"])]
    return data


def build_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, spec in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if "scene" in spec:
            path.write_bytes(_photo(path, spec))
        elif "solid" in spec:
            from PIL import Image

            w, h, rgb = spec["solid"]
            Image.new("RGB", (w, h), tuple(rgb)).save(path, "PNG")
        elif "text" in spec:
            path.write_text(spec["text"])
        elif "hex" in spec or spec.get("empty"):
            path.write_bytes(bytes.fromhex(spec.get("hex", "")))
        elif "sparse" in spec:
            with open(path, "wb") as f:
                f.write(bytes.fromhex(spec.get("head_hex", "")))
                f.truncate(spec["sparse"])
        elif spec.get("fifo"):
            os.mkfifo(path)
        elif spec.get("dir"):
            path.mkdir(exist_ok=True)
        elif "symlink" in spec:
            os.symlink(spec["symlink"], path)
        else:
            raise ValueError(f"{name}: unknown file spec {spec}")


def reference_logits(bundle: Path, batch) -> Any:
    """Schema 4 by hand: ONNX Runtime's embedding of model.onnx, then logit_scale * embedding @ W.T (+ b) in float64
    with W (and b) read straight from classes.safetensors (not through the runtime's ClassMatrix)."""
    import json

    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    emb = sess.run(["embedding"], {"image": batch.astype(np.float32)})[0].astype(np.float64)
    tensors = load_file(str(bundle / "classes.safetensors"))
    scale = json.loads((bundle / "manifest.json").read_text())["logit_scale"]
    return scale * emb @ tensors["class_embeddings"].astype(np.float64).T + tensors.get("class_bias", 0.0)


def _reference(bundle: Path, paths: list[str], classes: list[str]) -> dict[str, dict[str, Any]]:
    """Labels and scores (all classes, best first): Python preprocessing, then ONNX Runtime on model.onnx."""
    import numpy as np
    import onnxruntime as ort

    from clap_edge.runtime.classifier import Classifier

    if not paths:
        return {}
    with Classifier.open(bundle, backend="onnxruntime") as clf:
        batch = np.stack([clf.preprocess(p) for p in paths])
    logits = reference_logits(bundle, batch)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    out = {}
    for path, p in zip(paths, probs):
        order = np.argsort(-p, kind="stable")
        out[path] = {"labels": [classes[i] for i in order], "scores": [float(p[i]) for i in order]}
    return out


def resolve(spec: dict[str, Any], where: Path, top_k: int) -> tuple[list[str], dict[str, Any]]:
    """(the CLI's PATHS, the resolved expectation) for a case with generated files."""
    files = where / "files"
    paths = [str(files) if p == "." else str(files / p) for p in spec.get("paths", ["."])]
    want = spec["expect"]
    if want["verdict"] == "refused":  # the whole run refused (e.g. no image files found): check.py's rules
        return paths, dict(want, exit=want.get("exit", 2))
    records = [dict(r, path=str(files / r["path"])) for r in want["records"]]
    good = [r["path"] for r in records if "error" not in r]
    classes = json.loads((where / "bundle" / "manifest.json").read_text())["class_names"]
    ref = _reference(where / "bundle", good, classes)
    for r in records:
        if "error" not in r:
            r["labels"], r["scores"] = ref[r["path"]]["labels"][:top_k], ref[r["path"]]["scores"][:top_k]
    errors = sum("error" in r for r in records)
    expect = {"verdict": "per_image", "exit": 1 if errors else 0, "records": records, "text": want.get("text", False)}
    if errors:
        expect["last_line"] = f"{errors} of {len(records)} images could not be classified"
    return paths, expect


def problems(case: dict[str, Any], o: Any) -> list[str]:
    """How outcome `o` (check.Outcome) differs from a per-image expectation."""
    want = case["expect"]
    bad = []
    got = list(o.records.values())
    if [r["path"] for r in got] != [r["path"] for r in want["records"]]:
        bad.append(f"records {[r['path'] for r in got]} != expected {[r['path'] for r in want['records']]}")
    for exp in want["records"]:
        rec = o.records.get(exp["path"])
        if rec is None:
            continue
        if "error" in exp:
            if "error" not in rec or not all(s in rec["error"] for s in exp["error"]):
                bad.append(f"{exp['path']}: {rec} is not an error containing {exp['error']}")
            continue
        if rec.get("labels") != exp["labels"]:
            bad.append(f"{exp['path']}: labels {rec.get('labels')} != expected {exp['labels']} ({rec})")
            continue
        diff = max(abs(a - b) for a, b in zip(rec["scores"], exp["scores"]))
        if len(rec["scores"]) != len(exp["scores"]) or diff > SCORE_TOL:
            bad.append(f"{exp['path']}: scores {rec['scores']} differ from the reference {exp['scores']} ({diff:.2e})")
    if want.get("last_line") and o.last_line != want["last_line"]:
        bad.append(f"last stderr line {o.last_line!r} != {want['last_line']!r}")
    return bad


def text_problems(case: dict[str, Any], stdout: str) -> list[str]:
    """Text mode: one line per accepted record, in order, each path escaped (no forged record or column)."""
    from clap_edge.apps.cli.classify import escape_text

    good = [r for r in case["expect"]["records"] if "error" not in r]
    lines = stdout.splitlines()
    if len(lines) != len(good):
        return [f"text mode printed {len(lines)} lines for {len(good)} accepted images: {lines!r}"]
    return [f"text line {line!r} does not start with the escaped path {escape_text(r['path'])!r} and a tab"
            for line, r in zip(lines, good)
            if not line.startswith(escape_text(r["path"]) + "\t") or line.count("\t") != 1]
