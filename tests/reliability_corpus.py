"""The reliability corpus behind docs/reliability.md: bad and odd inputs of each kind, made here.

Each case runs the real code and ends in one of three outcomes:
  "accepted"  valid-but-odd input handled correctly (checked against an expectation stated here),
  "refused"   a clap-edge error whose message is one line and names the input,
  "FAIL ..."  anything else (a traceback-type exception, a wrong result, a message without the input).
``run_corpus(bundle, head_bundle, tmp)`` returns {kind: Counter(outcome)}; ``table(results)`` renders the
markdown table the doc holds. When the corpus changes, tests/test_reliability.py fails and prints
the new table to paste into docs/reliability.md (between its "corpus-table" markers).
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import socket
import tarfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from clap_edge.core.errors import ClapEdgeError

KINDS = {
    "image files": "odd-but-valid images (CMYK, 16-bit, RGBA, LA, palette+transparency, 1-bit, float, 8 EXIF "
                   "orientations, tiny, very wide) and broken ones (truncated, zero-byte, text, huge-dimension "
                   "header, FIFO, folder, broken link, missing)",
    "bundle byte flips": "one byte flipped (high bit) at the start, middle and end of every file of a bundle, "
                         "manifest.json and manifest.sha256 included",
    "manifest edits": "the 85 edits of tests/manifest_corpus.py written into a real bundle with a matching digest",
    "crafted tars": "gzip bomb, too many members, path escapes, absolute paths, links out, device/FIFO members, "
                    "truncated, not a tar, empty, and valid .tar / .tar.gz bundles",
    "class lists": "empty, blank, separators only, comment-only or non-UTF-8 files, duplicates (exact and "
                   "after Unicode NFC), a missing file, an empty folder, and valid lists",
    "corrupt heads": "bad head metadata (negative / string / NaN fields, unknown keys, deep nesting, not JSON), "
                     "truncated, empty, random bytes, wrong or missing tensors",
    "folder entries": "symlinked folder, link loop, the same folder twice, broken link, FIFO, socket, a link to a "
                      "character device, a file without an image extension, a named missing path, a named FIFO",
    "batcher requests": "empty arrays, preprocessed [3, H, W] floats (good, wrong shape, NaN), uint8 images, "
                        "PIL images, missing paths, 4-D and int16 arrays",
}


def _one_line_naming(error: BaseException, name: str | None) -> str:
    text = str(error)
    if not isinstance(error, ClapEdgeError) and not isinstance(error, (ValueError, TypeError)):
        return f"FAIL {type(error).__name__}: {text[:120]}"
    if "\n" in text.strip():
        return f"FAIL multi-line message: {text[:120]!r}"
    if name is not None and name not in text:
        return f"FAIL message does not name {name}: {text[:160]}"
    return "refused"


def _run(case: Callable[[], str], name: str | None, expect_error: bool) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = case()
    except Exception as e:  # noqa: BLE001 - the corpus judges every exception
        return _one_line_naming(e, name) if expect_error else f"FAIL {type(e).__name__}: {str(e)[:160]}"
    if expect_error and outcome == "accepted":
        return "FAIL accepted bad input"
    return outcome


# ---- image files ------------------------------------------------------------------------------


def _images(tmp: Path) -> list[tuple[Path, tuple[int, int] | None]]:
    """(path, expected (w, h) after EXIF rotation) for valid images, (path, None) for broken ones."""
    d = tmp / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    out: list[tuple[Path, tuple[int, int] | None]] = []

    def save(name, img, **kw):
        img.save(d / name, **kw)
        out.append((d / name, None if name.startswith("bad") else (img.width, img.height)))

    save("rgb.jpg", rgb, quality=90)
    save("rgb.png", rgb)
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("gray16.png", Image.fromarray((rng.integers(0, 65536, (30, 40))).astype(np.uint16)))
    save("rgba.png", rgb.convert("RGBA"))
    save("la.png", rgb.convert("LA"))
    p = rgb.convert("P")
    p.info["transparency"] = 0
    save("palette_t.png", p, transparency=0)
    save("bilevel.png", rgb.convert("1"))
    save("float.tif", Image.fromarray(rng.random((30, 40), dtype=np.float32)))
    save("int32.tif", Image.fromarray(rng.integers(0, 65536, (30, 40)).astype(np.int32)))
    save("tiny.png", Image.new("RGB", (1, 1), (9, 9, 9)))
    save("wide.png", Image.new("RGB", (4000, 2), (1, 2, 3)))
    save("rgb.webp", rgb)
    save("rgb.gif", rgb)
    save("rgb.bmp", rgb)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        name = f"exif{orientation}.jpg"
        rgb.save(d / name, exif=exif.tobytes())
        out.append((d / name, (30, 40) if orientation in (5, 6, 7, 8) else (40, 30)))
    good = (d / "rgb.jpg").read_bytes()
    (d / "bad_truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "bad_truncated.png").write_bytes((d / "rgb.png").read_bytes()[:200])
    (d / "bad_empty.jpg").write_bytes(b"")
    (d / "bad_text.jpg").write_text("not a picture")
    (d / "bad_random.png").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "bad_header_only.jpg").write_bytes(good[:20])
    (d / "bad_huge_header.png").write_bytes(_png_header(100_000, 100_000))
    os.mkfifo(d / "bad_fifo.jpg")
    (d / "bad_folder.jpg").mkdir()
    (d / "bad_dangling.jpg").symlink_to(d / "gone.jpg")
    for name in ("bad_truncated.jpg", "bad_truncated.png", "bad_empty.jpg", "bad_text.jpg", "bad_random.png",
                 "bad_header_only.jpg", "bad_huge_header.png", "bad_fifo.jpg", "bad_folder.jpg", "bad_dangling.jpg",
                 "bad_missing.jpg"):
        out.append((d / name, None))
    return out


def _png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def run_images(tmp: Path) -> Counter:
    from clap_edge.core.images import load_image

    results = Counter()
    for path, size in _images(tmp):
        def case(path=path, size=size):
            img = load_image(path)
            if img.mode != "RGB" or img.size != size:
                return f"FAIL decoded as {img.mode} {img.size}, expected RGB {size}"
            return "accepted"
        results[_run(case, path.name, expect_error=size is None)] += 1
    return results


# ---- bundles ---------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _open_fully(path: Path) -> str:
    from clap_edge.core.errors import BundleError
    from clap_edge.export.bundle import Bundle

    with Bundle.open(path) as b:
        bad = {n: p for n, p in b.verify_all().items() if p != "ok"}
        if bad:
            name, problem = next(iter(bad.items()))
            raise BundleError(f"{path}: {problem}")
    return "accepted"


def run_byte_flips(bundle: Path, tmp: Path) -> Counter:
    results = Counter()
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    for name in files:
        size = (bundle / name).stat().st_size
        for where, offset in (("start", 0), ("middle", size // 2), ("end", size - 1)):
            copy_dir = _copy(bundle, tmp / f"flip-{name.replace('/', '_')}-{where}")
            data = bytearray((copy_dir / name).read_bytes())
            data[offset] ^= 0x80
            (copy_dir / name).write_bytes(bytes(data))
            results[_run(lambda c=copy_dir: _open_fully(c), str(copy_dir), expect_error=True)] += 1
    return results


def run_manifest_edits(bundle: Path, tmp: Path) -> Counter:
    from clap_edge.export.bundle.writer import write_manifest
    from manifest_corpus import EDITS

    base = json.loads((bundle / "manifest.json").read_text())
    results = Counter()
    for i, (name, edit, verdict) in enumerate(EDITS):
        d = _copy(bundle, tmp / f"edit-{i}")
        m = copy.deepcopy(base)
        try:
            edit(m)
        except (KeyError, IndexError, TypeError) as e:
            results[f"FAIL corpus edit {name!r} does not apply: {e}"] += 1
            continue
        if (m.get("classes") or {}).get("bias"):  # the manifest says a bias is there: give the bundle one
            _add_class_bias(d, m)
        write_manifest(d, m, validate=False)

        def case(d=d):
            from clap_edge.export.bundle import Bundle

            with Bundle.open(d):
                return "accepted"
        outcome = _run(case, str(d), expect_error=verdict != "ok")
        if outcome == "refused":
            outcome = "refused"
        results[outcome] += 1
    return results


def _add_class_bias(d: Path, m: dict) -> None:
    """classes.safetensors with a zero class_bias [C] beside W, and the manifest's entry for it updated."""
    import hashlib

    from safetensors.numpy import load_file, save_file

    from clap_edge.export.bundle.names import CLASSES_BIAS, CLASSES_FILE

    tensors = load_file(str(d / CLASSES_FILE))
    tensors[CLASSES_BIAS] = np.zeros(len(m["class_names"]), np.float32)
    save_file(tensors, str(d / CLASSES_FILE))
    data = (d / CLASSES_FILE).read_bytes()
    m["files"][CLASSES_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None,
              mode: str = "w") -> Path:
    data = data or {}
    with tarfile.open(path, mode) as tar:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def run_tars(bundle: Path, tmp: Path) -> Counter:
    from clap_edge.export.bundle import pack_tar

    d = tmp / "tars"
    d.mkdir()
    good = pack_tar(bundle, d / "good.tar")
    with tarfile.open(d / "good.tar.gz", "w:gz") as tar:
        for p in sorted(bundle.rglob("*")):
            tar.add(p, arcname=p.relative_to(bundle).as_posix(), recursive=False)
    raw = good.read_bytes()
    bad: list[Path] = [
        _tar_with(d / "bomb.tar.gz", [_member("manifest.json"), _member("zeros")],
                  {"manifest.json": b"{}", "zeros": bytes(80 << 20)}, "w:gz"),
        _tar_with(d / "members.tar", [_member(f"f{i}") for i in range(10_001)], {f"f{i}": b"" for i in range(10_001)}),
        _tar_with(d / "escape.tar", [_member("../evil.txt")], {"../evil.txt": b"x"}),
        _tar_with(d / "absolute.tar", [_member("/tmp/clap-edge-evil.txt")], {"/tmp/clap-edge-evil.txt": b"x"}),
        _tar_with(d / "symlink_out.tar", [_member("manifest.json", tarfile.SYMTYPE, "/etc/passwd")]),
        _tar_with(d / "hardlink_out.tar", [_member("manifest.json", tarfile.LNKTYPE, "../../etc/passwd")]),
        _tar_with(d / "device.tar", [_member("dev", tarfile.CHRTYPE)]),
        _tar_with(d / "fifo.tar", [_member("pipe", tarfile.FIFOTYPE)]),
        _tar_with(d / "empty.tar", []),
        _tar_with(d / "dir_manifest.tar", [_member("manifest.json", tarfile.DIRTYPE)]),
    ]
    (d / "truncated.tar").write_bytes(raw[: len(raw) // 2])
    (d / "notatar.tar").write_bytes(b"hello" * 300)
    bad += [d / "truncated.tar", d / "notatar.tar"]
    results = Counter()
    for path in [good, d / "good.tar.gz"]:
        results[_run(lambda p=path: _open_fully(p), None, expect_error=False)] += 1
    for path in bad:
        results[_run(lambda p=path: _open_fully(p), str(path), expect_error=True)] += 1
    if Path("/tmp/clap-edge-evil.txt").exists() or (tmp / "evil.txt").exists():
        results["FAIL a member was written outside the extraction folder"] += 1
    return results


# ---- class lists, heads ------------------------------------------------------------------------


def run_class_lists(tmp: Path) -> Counter:
    from clap_edge.prompts import load_class_names

    d = tmp / "classes"
    d.mkdir()
    (d / "empty.txt").write_text("")
    (d / "comments.txt").write_text("# nothing\n   \n# here\n")
    (d / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (d / "ok.txt").write_text("cat\n dog \n# skip\nbird\n")
    (d / "nfc.txt").write_text("caf\u00e9\ncafe\u0301\n")
    (d / "empty_folder").mkdir()
    cases: list[tuple[str, list[str] | None]] = [
        ("", None), ("   ", None), (",", None), (" , ,", None), (str(d / "empty.txt"), None),
        (str(d / "comments.txt"), None), (str(d / "latin1.txt"), None), (str(d / "missing.txt"), None),
        (str(d / "empty_folder"), None),
        ("cat,dog", ["cat", "dog"]), ("cat, dog ,cat", ["cat", "dog"]), (str(d / "ok.txt"), ["cat", "dog", "bird"]),
        (str(d / "nfc.txt"), ["caf\u00e9"]), ("caf\u00e9,cafe\u0301,dog", ["caf\u00e9", "dog"]),
        ("single", ["single"]),
    ]
    results = Counter()
    for source, want in cases:
        def case(source=source, want=want):
            got = load_class_names(source)
            return "accepted" if got == want else f"FAIL got {got!r}, expected {want!r}"
        results[_run(case, None, expect_error=want is None)] += 1
    return results


def run_heads(tmp: Path) -> Counter:
    import torch
    from safetensors.torch import save_file

    from clap_edge.head import METADATA_KEY, CLAPHead, HeadConfig

    d = tmp / "heads"
    d.mkdir()
    head = CLAPHead(HeadConfig(in_dim=8, latent_dim=4, class_names=["cat", "dog"]))
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    meta = {"in_dim": 8, "latent_dim": 4, "out_dim": 8, "activation": "silu", "alpha": 1.0, "model_name": None,
            "pretrained": None, "class_names": ["cat", "dog"], "training": {}}
    bad_meta = [
        {"in_dim": -8}, {"in_dim": 0}, {"in_dim": "8"}, {"in_dim": True}, {"latent_dim": -1}, {"out_dim": 10**9},
        {"alpha": "x"}, {"alpha": [1]}, {"activation": "tanh"}, {"activation": None}, {"class_names": "cat"},
        {"class_names": [1, 2]}, {"class_names": ["cat", ""]}, {"class_names": ["caf\u00e9", "cafe\u0301"]},
        {"model_name": 5}, {"training": "fast"}, {"colour": "red"},
    ]
    raw_meta = ['{"in_dim": NaN}', '{"in_dim": 8, "alpha": Infinity}', "[1, 2]", "{not json",
                '{"training": ' * 2000 + "1" + "}" * 2000]
    paths = []
    for i, change in enumerate(bad_meta):
        p = d / f"meta{i}.safetensors"
        save_file(state, str(p), metadata={METADATA_KEY: json.dumps({**meta, **change})})
        paths.append(p)
    for i, text in enumerate(raw_meta):
        p = d / f"raw{i}.safetensors"
        save_file(state, str(p), metadata={METADATA_KEY: text})
        paths.append(p)
    p = d / "nometa.safetensors"
    save_file(state, str(p))
    paths.append(p)
    good = d / "good.safetensors"
    save_file(state, str(good), metadata={METADATA_KEY: json.dumps(meta)})
    for name, mutate in (("wrong_shape", lambda s: {**s, "linear.weight": torch.zeros(5, 8)}),
                         ("missing", lambda s: {k: v for k, v in s.items() if k != "linear.bias"}),
                         ("extra", lambda s: {**s, "other": torch.zeros(1)})):
        p = d / f"{name}.safetensors"
        save_file(mutate(state), str(p), metadata={METADATA_KEY: json.dumps(meta)})
        paths.append(p)
    data = good.read_bytes()
    for name, blob in (("truncated", data[: len(data) // 2]), ("empty", b""), ("random", os.urandom(512))):
        (d / f"{name}.safetensors").write_bytes(blob)
        paths.append(d / f"{name}.safetensors")
    results = Counter()
    results[_run(lambda: "accepted" if CLAPHead.load(good).config.class_names == ["cat", "dog"] else "FAIL",
                 None, expect_error=False)] += 1
    for p in paths:
        results[_run(lambda p=p: (CLAPHead.load(p), "accepted")[1], p.name, expect_error=True)] += 1
    return results


# ---- folders, batcher ---------------------------------------------------------------------------


def run_folder_entries(tmp: Path) -> Counter:
    from clap_edge.core.images import scan_images

    root = tmp / "tree"
    (root / "real").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "real" / "a.png")
    outside = tmp / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "b.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)
    (root / "twice").symlink_to(root / "real", target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp / "gone.png")
    os.mkfifo(root / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.png"))
    (root / "null.png").symlink_to("/dev/null")
    (root / "notes.txt").write_text("x")
    try:
        scan = scan_images([root, tmp / "missing.png", root / "pipe.png"])
    finally:
        sock.close()
    skipped = {p.path.relative_to(tmp).as_posix(): p.reason for p in scan.skipped}
    expected = {  # entry -> what must happen to it
        "tree/linked (followed)": any(p.name == "b.png" for p in scan.files),
        "tree/real/loop": skipped.get("tree/real/loop", "").startswith("symbolic link loop"),
        "tree/twice": skipped.get("tree/twice", "").startswith("same folder as"),
        "tree/dangling.png": skipped.get("tree/dangling.png") == "broken symbolic link",
        "tree/pipe.png": skipped.get("tree/pipe.png") == "not a regular file (named pipe (FIFO))",
        "tree/sock.png": skipped.get("tree/sock.png") == "not a regular file (socket)",
        "tree/null.png": skipped.get("tree/null.png") == "not a regular file (character device)",
        "tree/notes.txt": [p.name for p in scan.other_files] == ["notes.txt"],
        "missing.png (named)": skipped.get("missing.png") == "no such file or directory",
        "pipe.png (named)": list(skipped).count("tree/pipe.png") == 1 and
                            sum(1 for p in scan.skipped if p.path == root / "pipe.png") == 2,
    }
    results = Counter()
    for entry, ok in expected.items():
        results["accepted" if entry.endswith("(followed)") and ok else "refused" if ok else f"FAIL {entry}"] += 1
    return results


def run_batcher(bundle: Path, tmp: Path) -> Counter:
    from clap_edge.runtime.batching import BatchingClassifier
    from clap_edge.runtime.classifier import Classifier

    results = Counter()
    with Classifier.open(bundle, backend="onnxruntime", threads=1) as clf, BatchingClassifier(clf) as bc:
        img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        pre = clf.preprocess(img)
        nan = pre.copy()
        nan[1, 2, 3] = np.nan
        good = [img, pre, Image.fromarray(img), img[:, :, 0]]
        bad = [np.zeros(0, dtype=np.uint8), np.zeros((0, 4, 3), dtype=np.uint8), np.zeros(0, dtype=np.float32),
               np.zeros((3, 5, 5), dtype=np.float32), nan, np.zeros((1, *pre.shape), dtype=np.float32),
               img.astype(np.int16), str(tmp / "missing.png")]
        for item in good:
            results[_run(lambda i=item: "accepted" if bc.submit(i).result(60).labels else "FAIL", None, False)] += 1
        for item in bad:
            name = item if isinstance(item, str) else None
            results[_run(lambda i=item: (bc.submit(i).result(60), "accepted")[1], name, expect_error=True)] += 1
    return results


def run_corpus(bundle: Path, head_bundle: Path, tmp: Path) -> dict[str, Counter]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "image files": run_images(tmp),
        "bundle byte flips": run_byte_flips(head_bundle, tmp),
        "manifest edits": run_manifest_edits(head_bundle, tmp),
        "crafted tars": run_tars(bundle, tmp),
        "class lists": run_class_lists(tmp),
        "corrupt heads": run_heads(tmp),
        "folder entries": run_folder_entries(tmp),
        "batcher requests": run_batcher(bundle, tmp),
    }


def table(results: dict[str, Counter]) -> str:
    lines = ["| kind | cases | accepted (valid input, correct result) | refused with one line naming it | failures |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for kind in KINDS:
        c = results[kind]
        fails = sum(n for k, n in c.items() if k.startswith("FAIL"))
        lines.append(f"| {kind} | {sum(c.values())} | {c['accepted']} | {c['refused']} | {fails} |")
    total = Counter()
    for c in results.values():
        total.update(c)
    fails = sum(n for k, n in total.items() if k.startswith("FAIL"))
    lines.append(f"| **all** | {sum(total.values())} | {total['accepted']} | {total['refused']} | {fails} |")
    return "\n".join(lines)
