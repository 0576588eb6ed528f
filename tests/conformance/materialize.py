"""Build the conformance cases on disk: one base bundle plus each case's declarative edits.

Usage: python tests/conformance/materialize.py OUT [--only KIND[/CASE]]

Writes OUT/_base/{bundle/, images/, reference.json} once (a random-init ``clap-edge-tiny`` export with
torch seed 0, two generated images, and top-k labels/scores computed straight with ONNX Runtime on
the base model: a reference independent of both CLIs' own pipelines past preprocessing), then for
every ``tests/conformance/**/<case>.json`` OUT/<kind>/<case>/{bundle/ (or bundle.tar), case.json}.
The written case.json holds the resolved CLI arguments and expectations (see README.md) so that
runners in any language need no Python to read it. The case format is described in README.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLASSES = ["cat", "dog", "car", "tree", "boat"]
IMAGES = {"scene_a.png": (61, 47, 1), "scene_b.png": (40, 90, 2)}  # name -> (w, h, seed)
TOP_K = 3


# ---- the base bundle ---------------------------------------------------------------------------


def _scene(w: int, h: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x / max(w - 1, 1) * 255, y / max(h - 1, 1) * 255, 127 + 100 * np.sin(x / 5.0 + y / 9.0)], -1)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _base_key() -> str:
    """What the cached base depends on: this builder and the bundle writer's schema version."""
    import inspect

    from clap_edge.export.bundle.names import SCHEMA_VERSION

    src = inspect.getsource(build_base) + inspect.getsource(_reference) + repr((CLASSES, IMAGES, SCHEMA_VERSION))
    return hashlib.sha256(src.encode()).hexdigest() + "\n"


def build_base(out: Path) -> Path:
    """OUT/_base: bundle, images, reference.json (skipped when OUT/_base/done exists)."""
    base = out / "_base"
    key = _base_key()
    if (base / "done").is_file() and (base / "done").read_text() == key:
        return base
    if base.exists():
        shutil.rmtree(base)
    import numpy as np
    import torch
    from PIL import Image

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    (base / "images").mkdir(parents=True)
    for name, (w, h, seed) in IMAGES.items():
        Image.fromarray(_scene(w, h, seed)).save(base / "images" / name)
    torch.manual_seed(0)
    export_bundle(ExportConfig(out=base / "bundle", model_name="clap-edge-tiny", classes=CLASSES, torch_program=False))
    (base / "reference.json").write_text(json.dumps(_reference(base), indent=1))
    (base / "done").write_text(key)
    return base


def _reference(base: Path) -> dict[str, Any]:
    """Top-k labels and scores per image: Python preprocessing, then ONNX Runtime run directly on model.onnx."""
    import numpy as np
    import onnxruntime as ort

    from clap_edge.runtime.classifier import Classifier

    with Classifier.open(base / "bundle", backend="onnxruntime") as clf:
        batch = np.stack([clf.preprocess(base / "images" / n) for n in IMAGES])
    from image_cases import reference_logits  # schema 4: embedding, then the class matrix by hand

    logits = reference_logits(base / "bundle", batch)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    ref = {}
    for name, p in zip(IMAGES, probs):
        order = np.argsort(-p, kind="stable")
        ref[name] = {"labels": [CLASSES[i] for i in order], "scores": [float(p[i]) for i in order]}
    return ref


# ---- edits -----------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _node(doc: Any, path: str) -> tuple[Any, Any]:
    """(parent, key) for a '/'-separated path into the manifest (list indices as numbers)."""
    keys = path.split("/")
    node = doc
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    return node, (int(last) if isinstance(node, list) else last)


class Case:
    """One case being built: the bundle folder and its manifest (as a dict, or raw text once edited as text)."""

    def __init__(self, bundle: Path):
        self.bundle = bundle
        self.manifest = json.loads((bundle / "manifest.json").read_text())
        self.text: bytes | None = None  # raw manifest bytes, once an edit works on the text
        self.digest: str | None = None  # explicit manifest.sha256 content

    def apply(self, edit: dict[str, Any]) -> None:
        getattr(self, "op_" + edit["op"])(**{k: v for k, v in edit.items() if k != "op"})

    # manifest as data
    def op_set(self, path: str, value: Any) -> None:
        parent, key = _node(self.manifest, path)
        parent[key] = value

    def op_delete(self, path: str) -> None:
        parent, key = _node(self.manifest, path)
        del parent[key]

    def op_rename_key(self, path: str, old: str, new: str) -> None:
        parent, key = _node(self.manifest, path) if path else (None, None)
        obj = parent[key] if path else self.manifest
        obj[new] = obj.pop(old)

    # manifest as text (after the data edits are serialised)
    def op_text_replace(self, old: str, new: str, count: int = 1) -> None:
        text = self._text().decode("utf-8", "surrogateescape")
        assert old in text, f"text_replace: {old!r} not in the manifest"
        self.text = text.replace(old, new, count).encode("utf-8", "surrogateescape")

    def op_append_bytes(self, hex: str) -> None:
        self.text = self._text() + bytes.fromhex(hex)

    def op_digest(self, text: str) -> None:
        self.digest = text

    # files
    def op_write(self, file: str, text: str | None = None, hex: str | None = None, listed: bool = True) -> None:
        path = self.bundle / file
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode() if text is not None else bytes.fromhex(hex or "")
        path.write_bytes(data)
        if listed:
            self.manifest["files"][file] = {"sha256": _sha(data), "bytes": len(data)}

    def op_flip(self, file: str, offset: int) -> None:
        path = self.bundle / file
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x80
        path.write_bytes(bytes(data))

    def op_move(self, file: str, to: str) -> None:
        (self.bundle / to).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.bundle / file, self.bundle / to)

    def op_symlink(self, file: str, target: str) -> None:
        path = self.bundle / file
        if path.exists() or path.is_symlink():
            path.unlink()
        os.symlink(target, path)

    def op_fifo(self, file: str) -> None:
        path = self.bundle / file
        path.unlink()
        os.mkfifo(path)

    def op_sparse(self, file: str, size: int, head_hex: str = "") -> None:
        """Replace a file by a sparse one of `size` bytes (no disk used) starting with `head_hex`; list its size."""
        path = self.bundle / file
        with open(path, "wb") as f:
            f.write(bytes.fromhex(head_hex))
            f.truncate(size)
        self.manifest["files"][file]["bytes"] = size

    def op_bytes_delta(self, file: str, delta: int) -> None:
        """The manifest lies about a file's size by `delta` bytes (e.g. 2**32: a 32-bit truncation)."""
        self.manifest["files"][file]["bytes"] += delta

    def op_remove(self, file: str) -> None:
        (self.bundle / file).unlink()

    def op_relist(self, file: str) -> None:
        data = (self.bundle / file).read_bytes()
        self.manifest["files"][file] = {"sha256": _sha(data), "bytes": len(data)}

    def _text(self) -> bytes:
        if self.text is None:
            self.text = json.dumps(self.manifest, indent=2, ensure_ascii=False).encode("utf-8", "surrogateescape")
        return self.text

    def finish(self) -> None:
        text = self._text()
        if not (self.bundle / "manifest.json").is_symlink() and (self.bundle / "manifest.json").is_file():
            (self.bundle / "manifest.json").write_bytes(text)
        elif (self.bundle / "real" / "manifest.json").is_file():  # a `move`d manifest behind a symlink
            (self.bundle / "real" / "manifest.json").write_bytes(text)
        digest, sha = self.digest, _sha(text)
        path = self.bundle / "manifest.sha256"
        # tokens: @SHA (the right digest), @UPPER (it in upper case), @SHORT (63 digits), @REMOVE, @FIFO
        if digest == "@REMOVE":
            path.unlink()
        elif digest == "@FIFO":
            path.unlink()
            os.mkfifo(path)
        else:
            digest = {"@UPPER": f"{sha.upper()}  manifest.json\n", "@SHORT": f"{sha[:63]}  manifest.json\n",
                      None: f"{sha}  manifest.json\n"}.get(digest, digest)
            path.write_text(digest.replace("@SHA", sha))


def _tar(bundle: Path, spec: dict[str, Any]) -> Path:
    """bundle.tar[.gz] of the case's bundle plus crafted extra members; the folder is removed."""
    out = bundle.with_name("bundle.tar.gz" if spec.get("gzip") else "bundle.tar")
    with tarfile.open(out, "w:gz" if spec.get("gzip") else "w") as tar:
        if spec.get("include_bundle", True):
            for p in sorted(bundle.iterdir()):
                tar.add(p, arcname=p.name)
        for m in spec.get("members", []):
            info = tarfile.TarInfo(m["name"])
            kind = m.get("type", "file")
            data = m.get("text", "").encode()
            if kind == "file":
                info.size = len(data)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, m["target"]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, m["target"]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chardev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 5
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    if spec.get("truncate"):
        data = out.read_bytes()
        out.write_bytes(data[: int(len(data) * spec["truncate"])])
    shutil.rmtree(bundle)
    return out


# ---- cases -----------------------------------------------------------------------------------


def case_files(root: Path = HERE) -> list[Path]:
    """Every case file: <root>/<kind>/<case>.json and <root>/holdout/<kind>/<case>.json."""
    return sorted(p for p in root.rglob("*.json") if p.parent != root and not p.name.startswith("_"))


def case_id(path: Path, root: Path = HERE) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def resolve(spec: dict[str, Any], base: Path, reference: dict[str, Any], where: Path) -> dict[str, Any]:
    """The case.json a runner reads: bundle path, image paths, args, and the expectation with labels filled in."""
    images = [str(base / "images" / n) for n in spec.get("images", list(IMAGES))]
    expect = dict(spec["expect"])
    if "files" in spec:  # image / folder / geometry cases: generated files, per-image records (image_cases.py)
        import image_cases

        images, expect = image_cases.resolve(spec, where, spec.get("top_k", TOP_K))
    elif expect["verdict"] == "accepted":
        rename = spec.get("rename", {})
        top_k = spec.get("top_k", TOP_K)
        expect.setdefault("exit", 0)
        expect["outputs"] = {
            img: {"labels": [rename.get(c, c) for c in reference[Path(img).name]["labels"][:top_k]],
                  "scores": reference[Path(img).name]["scores"][:top_k]}
            for img in images}
    else:
        expect.setdefault("exit", 2)
    bundle = where / ("bundle" if not spec.get("tar") else
                      ("bundle.tar.gz" if spec["tar"].get("gzip") else "bundle.tar"))
    return {"id": spec["id"], "kind": spec["kind"], "description": spec.get("description", ""),
            "bundle": str(bundle), "images": images, "top_k": spec.get("top_k", TOP_K),
            "runtimes": spec.get("runtimes", ["python", "native"]), "schema": spec.get("schema"),
            "schema_manifest_verdict": spec.get("schema_manifest_verdict"), "error_line": spec.get("error_line"),
            "sidecar": spec.get("sidecar"),
            "holdout": spec["id"].startswith("holdout/"), "expect": expect}


def materialize(out: Path, only: str | None = None) -> list[dict[str, Any]]:
    """Build every case under OUT; returns the resolved case dicts."""
    out = out.resolve()
    base = build_base(out)
    reference = json.loads((base / "reference.json").read_text())
    cases = []
    for path in case_files():
        cid = case_id(path)
        if only and not (cid == only or cid.startswith(only.rstrip("/") + "/")):
            continue
        spec = json.loads(path.read_text())
        spec["id"] = cid
        spec.setdefault("kind", path.parent.name)
        where = out / cid
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        shutil.copytree(base / "bundle", where / "bundle", symlinks=True)
        case = Case(where / "bundle")
        for edit in spec.get("edits", []):
            case.apply(edit)
        case.finish()
        if "files" in spec:
            import image_cases

            image_cases.build_files(where / "files", spec["files"])
        if spec.get("tar"):
            _tar(where / "bundle", spec["tar"])
        resolved = resolve(spec, base, reference, where)
        (where / "case.json").write_text(json.dumps(resolved, indent=1, ensure_ascii=True))
        cases.append(resolved)
    (out / "cases.json").write_text(json.dumps([c["id"] for c in cases], indent=0))
    return cases


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    cases = materialize(Path(argv[0]), only)
    print(f"{len(cases)} cases under {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))
    sys.exit(main(sys.argv[1:]))
