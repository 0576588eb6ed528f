"""A hostile corpus for issue 17: invented attacks, run through both CLIs, every disagreement flagged.

Usage: python bench/hostile/run.py BASE_BUNDLE OUT [--native BUILD/runtime/cpp/clap-edge-classify] [--only NAME]

BASE_BUNDLE is a fp32 bundle (tests/conformance/materialize.py's OUT/_base/bundle). For each case it
writes OUT/<case>/{bundle,input}, runs ``clap-edge classify --json --backend onnxruntime`` and the
native ``clap-edge-classify --json --precision fp32`` under a timeout and a memory cap, and flags
tracebacks, signals, hangs, multi-line refusals, exit-code / verdict / top-k disagreement and
|Δscore| > 1e-4. Written by a tester who had not seen the conformance cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from clap_edge.export.bundle.writer import write_manifest

TIMEOUT = 90
MEM_KB = 6 * 1024 * 1024


# ---- image builders -------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h but carries almost no data (a decompression bomb in spirit)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def pil_image(w: int, h: int, mode: str = "RGB", fmt: str = "PNG", **kw) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(w * 131 + h)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg_with_orientation(value: int, little: bool) -> bytes:
    from PIL import Image
    import io

    data = pil_image(37, 23, fmt="JPEG", quality=95)
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = value
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes() if not little else exif.tobytes())
    raw = buf.getvalue()
    if little:
        return raw
    return raw.replace(b"II*\x00", b"MM\x00*", 1) if False else raw


# ---- cases ----------------------------------------------------------------------------------

CASES = {}


def case(name):
    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


def _load(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def medit(fn):
    """A manifest edit with the digest recomputed (so the semantic checks are what is tested)."""

    def build(bundle: Path, inp: Path):
        m = _load(bundle)
        fn(m)
        write_manifest(bundle, m, validate=False)

    return build


def raw_manifest(text_fn):
    """Manifest bytes written verbatim (duplicate keys, NaN, BOM ...), digest recomputed."""

    def build(bundle: Path, inp: Path):
        import hashlib

        text = (bundle / "manifest.json").read_text()
        data = text_fn(text)
        data = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        (bundle / "manifest.json").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        (bundle / "manifest.sha256").write_text(f"{digest}  manifest.json\n")

    return build


def sha_file(text_fn):
    def build(bundle: Path, inp: Path):
        old = (bundle / "manifest.sha256").read_text()
        (bundle / "manifest.sha256").write_bytes(text_fn(old).encode("latin-1"))

    return build


def _set(path, value):
    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return fn


def _del(path):
    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]

    return fn


MANIFEST_EDITS = {
    "cls_bidi_override": _set(["class_names", 0], "c\u202eat"),
    "cls_zero_width": _set(["class_names", 1], "do\u200bg"),
    "cls_nel_c1": _set(["class_names", 2], "car\u0085"),
    "cls_line_sep": _set(["class_names", 3], "tr\u2028ee"),
    "cls_del_7f": _set(["class_names", 4], "boat\u007f"),
    "cls_nonchar_fffe": _set(["class_names", 4], "boat\ufffe"),
    "cls_astral_emoji": _set(["class_names", 0], "cat\U0001F431"),
    "cls_leading_space": _set(["class_names", 0], " cat"),
    "cls_dup_after_nfc": lambda m: m["class_names"].__setitem__(slice(0, 2), ["\u00e9", "e\u0301"]),
    "cls_casefold_dup": lambda m: m["class_names"].__setitem__(slice(0, 2), ["Cat", "cat"]),
    "cls_int": _set(["class_names", 0], 7),
    "cls_six_for_five": lambda m: m["class_names"].append("extra"),
    "cls_four_for_five": lambda m: m["class_names"].pop(),
    "size_float": _set(["preprocess", "size"], [64.0, 64]),
    "size_bool": _set(["preprocess", "size"], [64, True]),
    "size_three": _set(["preprocess", "size"], [64, 64, 3]),
    "size_huge": _set(["preprocess", "size"], [46341, 46341]),
    "size_zero": _set(["preprocess", "size"], [0, 64]),
    "size_mismatch_input": _set(["preprocess", "size"], [32, 32]),
    "mean_two": _set(["preprocess", "mean"], [0.5, 0.5]),
    "std_zero": _set(["preprocess", "std"], [0.0, 0.26, 0.27]),
    "std_negative": _set(["preprocess", "std"], [-0.26, 0.26, 0.27]),
    "std_tiny_subnormal": _set(["preprocess", "std"], [5e-324, 0.26, 0.27]),
    "mean_huge": _set(["preprocess", "mean"], [1e308, 0.4, 0.4]),
    "interp_upper": _set(["preprocess", "interpolation"], "BICUBIC"),
    "interp_lanczos": _set(["preprocess", "interpolation"], "lanczos"),
    "interp_bilinear": _set(["preprocess", "interpolation"], "bilinear"),
    "interp_nearest": _set(["preprocess", "interpolation"], "nearest"),
    "resize_squash": _set(["preprocess", "resize_mode"], "squash"),
    "resize_longest": _set(["preprocess", "resize_mode"], "longest"),
    "resize_unknown": _set(["preprocess", "resize_mode"], "crop"),
    "fill_300": _set(["preprocess", "fill_color"], 300),
    "fill_neg": _set(["preprocess", "fill_color"], -1),
    "fill_list": _set(["preprocess", "fill_color"], [1, 2, 3]),
    "mode_L": _set(["preprocess", "mode"], "L"),
    "mode_rgba": _set(["preprocess", "mode"], "RGBA"),
    "schema_float": _set(["schema_version"], 3.0),
    "schema_string": _set(["schema_version"], "3"),
    "schema_true": _set(["schema_version"], True),
    "schema_future": _set(["schema_version"], 4),
    "schema_2": _set(["schema_version"], 2),
    "logit_scale_str": _set(["logit_scale"], "14.2"),
    "logit_scale_neg": _set(["logit_scale"], -1.0),
    "alpha_2": _set(["alpha"], 2.0),
    "templates_empty": _set(["templates"], []),
    "extra_top_key": _set(["zzz_future"], {"a": 1}),
    "no_files_model": _del(["files", "model.onnx"]),
    "variant_to_calib": _set(["variants", "fp32"], "calibration.npy"),
    "variant_to_classes": _set(["variants", "fp32"], "classes.safetensors"),
    "variant_missing_file": _set(["variants", "fp32"], "nope.onnx"),
    "variants_empty": _set(["variants"], {}),
    "variant_int8_only_alias": lambda m: m["variants"].update({"int8": "model.onnx"}),
    "bytes_float": lambda m: m["files"]["model.onnx"].__setitem__("bytes", float(m["files"]["model.onnx"]["bytes"])),
    "bytes_string": lambda m: m["files"]["model.onnx"].__setitem__("bytes", str(m["files"]["model.onnx"]["bytes"])),
    "bytes_bool": lambda m: m["files"]["classes.safetensors"].__setitem__("bytes", True),
    "sha_upper": lambda m: m["files"]["model.onnx"].__setitem__("sha256", m["files"]["model.onnx"]["sha256"].upper()),
    "sha_short": lambda m: m["files"]["model.onnx"].__setitem__("sha256", m["files"]["model.onnx"]["sha256"][:63]),
    "fname_trailing_slash": lambda m: _rename(m, "model.onnx", "model.onnx/"),
    "fname_dot_slash_nested": lambda m: _rename(m, "model.onnx", "a/./model.onnx"),
    "fname_backslash": lambda m: _rename(m, "model.onnx", "a\\model.onnx"),
    "fname_abs": lambda m: _rename(m, "model.onnx", "/etc/passwd"),
    "fname_colon": lambda m: _rename(m, "model.onnx", "C:model.onnx"),
    "input_dtype_f16": _set(["inputs", 0, "dtype"], "float16"),
    "input_shape_n_int": _set(["inputs", 0, "shape", 0], 1),
    "input_shape_neg": _set(["inputs", 0, "shape", 0], -1),
    "outputs_swapped": lambda m: m.__setitem__("outputs", m["outputs"][::-1]),
    "embed_dim_str": _set(["embed_dim"], "64"),
    "parity_garbage": _set(["parity"], "yes"),
    "opset_5000_digits": _set(["opset"], int("9" * 4000)),
    "out0_named_embedding": lambda m: (m["outputs"][0].__setitem__("name", "embedding"), m["outputs"][1].__setitem__("name", "logits")),
    "out_name_bogus": _set(["outputs", 0, "name"], "zzz"),
    "in_name_bogus": _set(["inputs", 0, "name"], "zzz"),
    "one_output_only": lambda m: m.__setitem__("outputs", m["outputs"][:1]),
    "no_outputs": _set(["outputs"], []),
}


def _rename(m, old, new):
    m["files"][new] = m["files"].pop(old)
    for k, v in list(m["variants"].items()):
        if v == old:
            m["variants"][k] = new


for _n, _fn in MANIFEST_EDITS.items():
    CASES["m_" + _n] = medit(_fn)

RAW_EDITS = {
    "dup_key_class_names": lambda t: t.replace('"embed_dim"', '"class_names": ["boat","tree","car","dog","cat"],\n  "embed_dim"', 1),
    "dup_key_schema": lambda t: t.replace('"embed_dim"', '"schema_version": 99,\n  "embed_dim"', 1),
    "bom": lambda t: b"\xef\xbb\xbf" + t.encode(),
    "nan_logit_scale": lambda t: _re_sub(t, r'"logit_scale": [^,]+', '"logit_scale": NaN'),
    "inf_alpha": lambda t: _re_sub(t, r'"alpha": [^,]+', '"alpha": 1e999'),
    "neg_zero_alpha": lambda t: _re_sub(t, r'"alpha": [^,]+', '"alpha": -0.0'),
    "invalid_utf8": lambda t: t.replace('"cat"', '"c\xffat"').encode("latin-1", "replace") if False else t.encode().replace(b'"cat"', b'"c\xffat"'),
    "lone_surrogate": lambda t: t.replace('"cat"', '"c\\ud800at"'),
    "escaped_nul_name": lambda t: t.replace('"cat"', '"ca\\u0000t"'),
    "deep_nesting": lambda t: t.replace('"embed_dim"', '"zz": ' + "[" * 200000 + "]" * 200000 + ',\n  "embed_dim"', 1),
    "huge_exponent_int": lambda t: _re_sub(t, r'"opset": \d+', '"opset": 17e0'),
    "opset_float": lambda t: _re_sub(t, r'"opset": \d+', '"opset": 17.5'),
    "bytes_exp": lambda t: _re_sub(t, r'"bytes": 630867', '"bytes": 6.30867e5'),
    "trailing_garbage": lambda t: t + "\n}",
    "trailing_nul": lambda t: t + "\x00",
    "comment": lambda t: t.replace("{", "{ /* c */", 1),
    "top_level_array": lambda t: "[" + t + "]",
    "empty": lambda t: "",
    "whitespace_64mb": lambda t: t + " " * (64 * 1024 * 1024),
}


def _re_sub(t, pat, rep):
    import re

    out, n = re.subn(pat, rep, t, count=1)
    assert n, pat
    return out


for _n, _fn in RAW_EDITS.items():
    CASES["raw_" + _n] = raw_manifest(_fn)

SHA_EDITS = {
    "upper": lambda t: t.upper().replace("MANIFEST.JSON", "manifest.json"),
    "star_binary": lambda t: t.replace("  manifest.json", " *manifest.json"),
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "no_newline": lambda t: t.rstrip("\n"),
    "one_space": lambda t: t.replace("  ", " "),
    "two_lines": lambda t: t + t,
    "other_name": lambda t: t.replace("manifest.json", "other.json"),
    "digest_only": lambda t: t.split()[0],
    "leading_space": lambda t: " " + t,
    "tab": lambda t: t.replace("  ", "\t"),
}
for _n, _fn in SHA_EDITS.items():
    CASES["sha_" + _n] = sha_file(_fn)


def img_case(name, data_fn, fname="x.png"):
    def build(bundle: Path, inp: Path):
        (inp / fname).write_bytes(data_fn())

    CASES["img_" + name] = build


img_case("bomb_60000", lambda: png_header_only(60000, 60000))
img_case("bomb_1x10M", lambda: png_header_only(1, 10_000_000))
img_case("bomb_10Mx1", lambda: png_header_only(10_000_000, 1))
img_case("tall_1x900", lambda: pil_image(1, 900))
img_case("wide_900x1", lambda: pil_image(900, 1))
img_case("one_px", lambda: pil_image(1, 1))
img_case("png16", lambda: _png16())
img_case("palette_trns", lambda: pil_image(33, 17, mode="P", fmt="PNG", transparency=0))
img_case("la", lambda: pil_image(29, 31, mode="LA"))
img_case("rgba", lambda: pil_image(29, 31, mode="RGBA"))
img_case("onebit", lambda: pil_image(41, 19, mode="1"))
img_case("cmyk_jpeg", lambda: pil_image(40, 30, mode="CMYK", fmt="JPEG"), "x.jpg")
img_case("gray_jpeg", lambda: pil_image(40, 30, mode="L", fmt="JPEG"), "x.jpg")
img_case("progressive_jpeg", lambda: pil_image(70, 50, fmt="JPEG", progressive=True), "x.jpg")
img_case("jpeg_named_png", lambda: pil_image(70, 50, fmt="JPEG"), "x.png")
img_case("png_named_jpg", lambda: pil_image(70, 50), "x.jpg")
img_case("interlaced_png", lambda: _interlaced())
img_case("gif", lambda: pil_image(30, 20, mode="P", fmt="GIF"), "x.gif")
img_case("bmp", lambda: pil_image(30, 20, fmt="BMP"), "x.bmp")
img_case("webp", lambda: pil_image(30, 20, fmt="WEBP"), "x.webp")
img_case("tiff", lambda: pil_image(30, 20, fmt="TIFF"), "x.tiff")
img_case("upper_ext", lambda: pil_image(30, 20), "x.PNG")
img_case("empty_png", lambda: b"", "x.png")
img_case("magic_only", lambda: b"\x89PNG\r\n\x1a\n", "x.png")
img_case("bad_crc", lambda: _bad_crc())
img_case("truncated_jpeg", lambda: pil_image(64, 64, fmt="JPEG")[:300], "x.jpg")
img_case("exif_orient_9", lambda: _jpeg_exif(9), "x.jpg")
img_case("exif_orient_0", lambda: _jpeg_exif(0), "x.jpg")
img_case("exif_orient_6", lambda: _jpeg_exif(6), "x.jpg")
img_case("exif_orient_6_be", lambda: _jpeg_exif(6, big=True), "x.jpg")
img_case("exif_garbage_app1", lambda: _jpeg_app1(b"Exif\x00\x00" + b"MM\x00*\x00\x00\xff\xff\xff\xf0"), "x.jpg")
img_case("exif_loop_ifd", lambda: _jpeg_app1(b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + struct.pack("<HHII", 0x8769, 4, 1, 8) + struct.pack("<I", 8)), "x.jpg")


def _png16():
    import io

    import numpy as np
    from PIL import Image

    arr = (np.arange(30 * 20, dtype=np.uint16).reshape(20, 30) * 97) % 65535
    buf = io.BytesIO()
    Image.frombytes("I;16", (30, 20), arr.astype("<u2").tobytes()).save(buf, format="PNG")
    return buf.getvalue()


def _interlaced():
    import subprocess  # noqa
    from PIL import Image  # PIL cannot write Adam7; emulate with a plain PNG flag? keep honest: plain PNG.
    return pil_image(45, 33)


def _bad_crc():
    data = bytearray(pil_image(30, 20))
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def _jpeg_exif(value: int, big: bool = False):
    if big:
        ifd = b"MM\x00*\x00\x00\x00\x08" + b"\x00\x01" + struct.pack(">HHIHH", 0x0112, 3, 1, value, 0) + b"\x00\x00\x00\x00"
    else:
        ifd = b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + struct.pack("<HHIHH", 0x0112, 3, 1, value, 0) + b"\x00\x00\x00\x00"
    return _jpeg_app1(b"Exif\x00\x00" + ifd)


def _jpeg_app1(payload: bytes):
    base = pil_image(37, 23, fmt="JPEG", quality=95)
    seg = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return base[:2] + seg + base[2:]


def folder_case(name):
    def deco(fn):
        CASES["dir_" + name] = fn
        return fn

    return deco


@folder_case("hidden_files")
def _(b, inp):
    (inp / ".hidden.png").write_bytes(pil_image(20, 20))
    (inp / "v.png").write_bytes(pil_image(21, 20))


@folder_case("unicode_order")
def _(b, inp):
    for n in ["B.png", "a.png", "\u00e9.png", "e\u0301.png", "Z.png", "_.png"]:
        (inp / n).write_bytes(pil_image(20 + len(n), 20))


@folder_case("bad_utf8_name")
def _(b, inp):
    os.makedirs(inp, exist_ok=True)
    with open(os.path.join(os.fsencode(inp), b"bad\xff.png"), "wb") as f:
        f.write(pil_image(22, 20))


@folder_case("newline_name")
def _(b, inp):
    (inp / "a\nb.png").write_bytes(pil_image(22, 20))


@folder_case("deep")
def _(b, inp):
    d = inp
    for i in range(60):
        d = d / "d"
    d.mkdir(parents=True)
    (d / "x.png").write_bytes(pil_image(22, 20))


@folder_case("self_symlink_file")
def _(b, inp):
    os.symlink("loop.png", inp / "loop.png")
    (inp / "ok.png").write_bytes(pil_image(22, 20))


@folder_case("symlink_to_dev_zero")
def _(b, inp):
    os.symlink("/dev/zero", inp / "zero.png")
    (inp / "ok.png").write_bytes(pil_image(22, 20))


@folder_case("two_links_same_dir")
def _(b, inp):
    (inp / "real").mkdir()
    (inp / "real" / "x.png").write_bytes(pil_image(22, 20))
    os.symlink("real", inp / "l1")
    os.symlink("real", inp / "l2")


@folder_case("dir_named_png")
def _(b, inp):
    (inp / "sub.png").mkdir()
    (inp / "sub.png" / "x.png").write_bytes(pil_image(22, 20))


@folder_case("unreadable_subdir")
def _(b, inp):
    (inp / "locked").mkdir()
    (inp / "locked" / "x.png").write_bytes(pil_image(22, 20))
    os.chmod(inp / "locked", 0)
    (inp / "ok.png").write_bytes(pil_image(22, 20))


@folder_case("empty")
def _(b, inp):
    pass


@folder_case("no_images")
def _(b, inp):
    (inp / "readme.txt").write_text("hi")


def arg_case(name, fn):
    def build(b, inp):
        (inp / "ok.png").write_bytes(pil_image(22, 20))
        return fn(b, inp)

    CASES["arg_" + name] = build


def _fifo(b, inp):
    os.mkfifo(inp / "f.png")
    return [str(inp / "f.png"), str(inp / "ok.png")]


arg_case("fifo_direct", _fifo)
arg_case("dev_zero_direct", lambda b, inp: ["/dev/zero", str(inp / "ok.png")])
arg_case("missing_direct", lambda b, inp: [str(inp / "nope.png"), str(inp / "ok.png")])
arg_case("same_file_twice", lambda b, inp: [str(inp / "ok.png"), str(inp / "ok.png")])
arg_case("file_and_its_dir", lambda b, inp: [str(inp / "ok.png"), str(inp)])
arg_case("dir_and_dotdot_alias", lambda b, inp: [str(inp), str(inp / ".." / "input")])
arg_case("txt_file_direct", lambda b, inp: ((inp / "x.txt").write_bytes(pil_image(22, 20)), [str(inp / "x.txt")])[1])
arg_case("dash", lambda b, inp: ["-"])
arg_case("empty_string", lambda b, inp: ["", str(inp / "ok.png")])
arg_case("bundle_as_image", lambda b, inp: [str(b / "manifest.json"), str(inp / "ok.png")])
arg_case("proc_self", lambda b, inp: ["/proc/self/status", str(inp / "ok.png")])


# ---- bundle swaps ---------------------------------------------------------------------------


@case("b_model_replaced_same_digest_manifest")
def _(b, inp):
    # swap model.onnx for calibration.npy's bytes and record them: the digest is right, the file is not ONNX.
    import hashlib

    m = _load(b)
    data = (b / "calibration.npy").read_bytes()
    (b / "model.onnx").write_bytes(data)
    m["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(b, m, validate=False)


@case("b_manifest_symlink")
def _(b, inp):
    (b / "real.json").write_bytes((b / "manifest.json").read_bytes())
    (b / "manifest.json").unlink()
    os.symlink("real.json", b / "manifest.json")


@case("b_extra_unlisted_file")
def _(b, inp):
    (b / "evil.onnx").write_bytes(b"x")


@case("b_classes_truncated")
def _(b, inp):
    import hashlib

    data = (b / "classes.safetensors").read_bytes()[:-100]
    (b / "classes.safetensors").write_bytes(data)
    m = _load(b)
    m["files"]["classes.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(b, m, validate=False)


@case("b_safetensors_header_lies")
def _(b, inp):
    import hashlib

    data = bytearray((b / "classes.safetensors").read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[:8] = struct.pack("<Q", n + 10**12)
    (b / "classes.safetensors").write_bytes(bytes(data))
    m = _load(b)
    m["files"]["classes.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(b, m, validate=False)


# Disagreements the project documents (README: "The tools decode JPEG and PNG only"): reported, not flagged.
DOCUMENTED_GAPS = {f"img_{k}": "the native tools decode JPEG and PNG only" for k in ("gif", "bmp", "webp", "tiff")}


# ---- running --------------------------------------------------------------------------------


def _limit():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEM_KB * 1024, MEM_KB * 1024))


def run_one(cmd: list[str]) -> dict:
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, preexec_fn=_limit)
    except subprocess.TimeoutExpired:
        return {"rc": "timeout", "out": "", "err": ""}
    return {"rc": p.returncode, "out": p.stdout.decode("utf-8", "replace"), "err": p.stderr.decode("utf-8", "replace")}


def _rows(out: str):
    rows = {}
    for line in out.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            rows.setdefault("<unparsable>", []).append(line)
            continue
        rows[r.get("path")] = r
    return rows


def judge(py: dict, cc: dict) -> list[str]:
    flags = []
    for who, r in (("py", py), ("cc", cc)):
        if r["rc"] == "timeout":
            flags.append(f"{who}: hang")
            continue
        if r["rc"] < 0:
            flags.append(f"{who}: signal {-r['rc']}")
        if "Traceback" in r["err"] or "terminate called" in r["err"]:
            flags.append(f"{who}: traceback")
        if r["rc"] == 2 and len([x for x in r["err"].splitlines() if x.strip() and "WARNING" not in x and "No pretrained" not in x]) > 1:
            flags.append(f"{who}: multi-line refusal")
    if py["rc"] != cc["rc"]:
        flags.append(f"exit code py={py['rc']} cc={cc['rc']}")
    pr, cr = _rows(py["out"]), _rows(cc["out"])
    if set(pr) != set(cr):
        flags.append(f"paths differ py={sorted(map(str, pr))[:4]} cc={sorted(map(str, cr))[:4]}")
    for path in set(pr) & set(cr):
        a, c = pr[path], cr[path]
        if isinstance(a, list) or isinstance(c, list):
            continue
        if ("error" in a) != ("error" in c):
            flags.append(f"{path}: verdict py={'error' if 'error' in a else 'ok'} cc={'error' if 'error' in c else 'ok'}")
            continue
        if "labels" in a:
            if a["labels"] != c.get("labels"):
                flags.append(f"{path}: top-k py={a['labels']} cc={c.get('labels')}")
            else:
                d = max((abs(x - y) for x, y in zip(a["scores"], c["scores"]) if x is not None and y is not None), default=0)
                if d > 1e-4 or any(x is None for x in a["scores"] + c["scores"]):
                    flags.append(f"{path}: |dscore|={d:.2e} py={a['scores'][:2]} cc={c['scores'][:2]}")
    return flags


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--native", default="build/native/runtime/cpp/clap-edge-classify")
    ap.add_argument("--only", default=None)
    ap.add_argument("--signed", action="store_true", help="run the signed-bundle and export-triton attacks")
    a = ap.parse_args()
    if a.signed:
        res = signed_and_triton(a.base, a.out / "signed")
        bad = [n for n, f in res.items() if f]
        print(f"{len(res)} attacks, {len(bad)} flagged: {bad}")
        return 1 if bad else 0
    results = {}
    sample = a.base.parent / "images" / "scene_a.png"
    for name, build in CASES.items():
        if a.only and not name.startswith(a.only):
            continue
        d = a.out / name
        if d.exists():
            subprocess.run(["chmod", "-R", "u+rwx", str(d)])
            shutil.rmtree(d)
        shutil.copytree(a.base, d / "bundle", symlinks=True)
        (d / "input").mkdir(parents=True)
        inp = d / "input"
        args = build(d / "bundle", inp) or [str(inp)]
        if not any(inp.iterdir()) and not name.startswith(("dir_", "arg_")):
            shutil.copy(sample, inp / "scene_a.png")
        py = run_one(["clap-edge", "classify", str(d / "bundle"), *args, "--json", "--backend", "onnxruntime", "--top-k", "3"])
        cc = run_one([a.native, str(d / "bundle"), *args, "--json", "--precision", "fp32", "--top-k", "3"])
        flags = judge(py, cc)
        if name in DOCUMENTED_GAPS and flags:
            flags = []
            print(f"    (documented gap: {DOCUMENTED_GAPS[name]})")
        results[name] = {"flags": flags, "py": py, "cc": cc}
        status = "FAIL " + "; ".join(flags) if flags else "ok"
        print(f"{name}: py={py['rc']} cc={cc['rc']} {status}", flush=True)
        if flags:
            for who, r in (("py", py), ("cc", cc)):
                print(f"    {who} err: {r['err'].strip()[-300:]!r}")
    (a.out / f"results-{a.only or 'all'}.json").write_text(json.dumps(results, indent=1))
    bad = [n for n, r in results.items() if r["flags"]]
    print(f"{len(results)} attacks, {len(bad)} flagged: {bad}")
    return 1 if bad else 0



# ---- signed bundles and export-triton (Python CLI only: the native tool has neither) -------


def _cli(*args) -> dict:
    return run_one(["clap-edge", *map(str, args)])


def _py_flags(r: dict, want_rc: int) -> list[str]:
    f = []
    if r["rc"] == "timeout":
        return ["hang"]
    if r["rc"] < 0:
        f.append(f"signal {-r['rc']}")
    if "Traceback" in r["err"]:
        f.append("traceback")
    if r["rc"] != want_rc:
        f.append(f"exit {r['rc']} (want {want_rc}): {r['err'].strip()[-200:]!r}")
    lines = [x for x in r["err"].splitlines() if x.strip() and "WARNING" not in x and "No pretrained" not in x]
    if want_rc == 2 and len(lines) > 1:
        f.append(f"multi-line refusal {lines!r}")
    return f


def signed_and_triton(base: Path, out: Path) -> dict[str, list[str]]:
    res: dict[str, list[str]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for k in ("a", "b"):
        if not (out / f"{k}.pem").exists():
            subprocess.run(["clap-edge", "keygen", str(out / k)], capture_output=True, cwd=out)
    keys = {k: (sorted(out.glob(f"{k}*.pub*")) or sorted(out.glob(f"{k}*pub*")))[0] for k in ("a", "b")}
    priv = {k: out / f"{k}.pem" for k in ("a", "b")}
    img = base.parent / "images" / "scene_a.png"

    def fresh(name: str, key="a") -> Path:
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(base, d, symlinks=True)
        r = _cli("sign", d, "--key", priv[key])
        assert r["rc"] == 0, r
        return d

    def classify(name, d, key="a", want=2):
        res[name] = _py_flags(_cli("classify", d, img, "--json", "--backend", "onnxruntime", "--trusted-key", keys[key]), want)

    classify("sig_ok", fresh("sig_ok"), want=0)
    d = fresh("sig_manifest_edit")
    m = _load(d); m["class_names"][0] = "forged"; write_manifest(d, m, validate=False)
    classify("sig_manifest_edit", d)
    d = fresh("sig_extra_file"); (d / "zz.onnx").write_bytes(b"\x08x")
    classify("sig_extra_file", d)
    classify("sig_wrong_key", fresh("sig_wrong_key"), key="b")
    d1, d2 = fresh("sig_swap_1"), fresh("sig_swap_2")
    m = _load(d2); m["class_names"][0] = "forged"; write_manifest(d2, m, validate=False)
    shutil.copy(d1 / "bundle.sig", d2 / "bundle.sig")
    classify("sig_swapped_sig", d2)
    d = fresh("sig_sha_whitespace"); (d / "manifest.sha256").write_text((d / "manifest.sha256").read_text() + "\n")
    classify("sig_sha_whitespace", d)
    d = fresh("sig_removed_calib"); (d / "calibration.npy").unlink()
    classify("sig_removed_calib", d)
    d = fresh("sig_sig_empty"); (d / "bundle.sig").write_bytes(b"")
    classify("sig_sig_empty", d)
    d = fresh("sig_sig_garbage"); (d / "bundle.sig").write_bytes(b"{" * 100000)
    classify("sig_sig_garbage", d)
    for bad, content in (("empty", b""), ("private", priv["a"].read_bytes()), ("garbage", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")):
        kf = out / f"key_{bad}.pem"; kf.write_bytes(content)
        res[f"sig_key_{bad}"] = _py_flags(_cli("classify", fresh(f"sig_key_{bad}"), img, "--json", "--backend", "onnxruntime", "--trusted-key", kf), 2)
    res["sig_key_dir"] = _py_flags(_cli("classify", fresh("sig_key_dir"), img, "--json", "--trusted-key", out), 2)

    # export-triton: names that try to escape config.pbtxt or the repository
    def triton(name, edit=None, model_name=None, want=2):
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(base, d / "bundle")
        if edit:
            m = _load(d / "bundle"); edit(m); write_manifest(d / "bundle", m, validate=False)
        args = ["export-triton", d / "bundle", d / "repo"] + (["--model-name", model_name] if model_name else [])
        r = _cli(*args)
        f = _py_flags(r, want)
        outside = [p for p in d.rglob("*") if "evil" in p.name]
        if outside:
            f.append(f"wrote {outside}")
        for cfg in (d / "repo").rglob("config.pbtxt"):
            if "evil" in cfg.read_text() or "default_model_filename" in cfg.read_text():
                f.append("config injection: " + cfg.read_text()[:200])
        res[name] = f

    triton("tri_ok", want=0)
    triton("tri_outname_inject", _set(["outputs", 0, "name"], 'logits"\n  default_model_filename: "../../evil.onnx'))
    triton("tri_inname_inject", _set(["inputs", 0, "name"], 'image" } ] default_model_filename: "evil.onnx" input [ { name: "x'))
    triton("tri_model_name_dotdot", model_name="../evil")
    triton("tri_model_name_slash", model_name="a/evil")
    triton("tri_model_name_quote", model_name='m" default_model_filename: "evil.onnx')
    triton("tri_model_name_empty", model_name="")
    triton("tri_model_name_dot", model_name=".")
    triton("tri_model_name_newline", model_name="m\nevil")
    triton("tri_class_braces", _set(["class_names", 0], '} default_model_filename: "evil'), want=0)
    triton("tri_class_backslash_n", _set(["class_names", 0], "a\\nb"), want=0)
    for n, f in res.items():
        print(f"{n}: {'ok' if not f else 'FAIL ' + '; '.join(f)}", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
