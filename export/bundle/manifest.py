"""The manifest as typed dataclasses <-> JSON, with every check in one place (:meth:`Manifest.from_dict`).

``manifest.schema.json`` (beside this file) states the same rules for readers in other languages;
``tests/test_manifest_schema.py`` runs a corpus of good and bad manifests through both and checks
that they agree. Rules the schema language cannot state (output widths vs the class list, variants
naming listed files, class names unique after Unicode NFC) are checked here only.

Free-form-but-typed sections, which other parts of the toolkit fill without a schema change:
``variants`` {variant: file}, ``parity`` {variant: {metric: value}}, ``drift`` {variant: {...}},
``engines`` [{file, engine, precision, sidecar?, ...}]; their values are JSON with finite numbers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import PurePosixPath
from typing import Any

from clap_edge.core.classnames import describe_duplicate, nfc_duplicate
from clap_edge.core.preprocess import PreprocessCfg
from clap_edge.export.bundle.textrules import escape_controls, file_name_problem, name_problem
from clap_edge.export.bundle.names import (CLASSES_FILE, INPUT_IMAGE, META_FILES, MIN_SCHEMA_VERSION,
                                             OUTPUT_EMBEDDING, OUTPUT_LOGITS, REEXPORT_HINT, SCHEMA_VERSION,
                                             VARIANT_FILES)

__all__ = ["Manifest", "ModelInfo", "HeadInfo", "PreprocessCfg", "TensorSpec", "FileEntry", "EngineEntry",
           "ClassesInfo", "TextInfo",
           "ManifestFieldError", "check_version", "loads", "dumps", "to_json", "check_unique_names", "LIMITS"]

# Bounds (also in the schema): a manifest is small; anything beyond these is an attack or a bug.
LIMITS = {
    "manifest_bytes": 64 << 20,
    "depth": 32,
    "classes": 200_000,
    "name_chars": 1024,
    "templates": 10_000,
    "files": 10_000,
    "embed_dim": 65_536,
    "image_side": 16_384,
}
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")
RESIZE_MODES = ("shortest", "longest", "squash")
DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SURROGATE = re.compile("[\ud800-\udfff]")


class ManifestFieldError(ValueError):
    """A manifest field is wrong: ``field`` is its JSON path (e.g. ``preprocess.std[1]``)."""

    def __init__(self, path: str, problem: str):
        shown = escape_controls(path)  # the path holds the manifest's own keys: one line whatever they hold
        super().__init__(f"manifest field {shown}: {problem}" if path else f"manifest: {problem}")
        self.field, self.problem = path, problem


# ---- the dataclasses ------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadInfo:
    alpha: float
    latent_dim: int
    activation: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    pretrained: str | None = None
    head: HeadInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a symbolic dim (the batch, "N")
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class EngineEntry:
    """A compiled engine for one machine (e.g. TensorRT): its file, an optional sidecar, and free-form extras."""

    file: str
    engine: str
    precision: str
    sidecar: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassesInfo:
    """How classes.safetensors is applied (schema 4): ``bias`` says a ``class_bias`` [C] tensor is there;
    ``provenance`` records how the class matrix was made ({"method": "zero-shot-text" | "linear-probe" | ...})."""

    bias: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextInfo:
    """The optional text encoder: ``file`` (token ids [N, context_length] int64 -> class embedding [N, d]),
    its int8 variant if any, and the tokenizer (``tokenizer``: {"kind", "files": {role: file}, ...})."""

    file: str
    context_length: int
    tokenizer: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, typed and frozen: what :class:`~clap_edge.export.bundle.Bundle` exposes and the
    writer takes. Sequences are tuples; mappings are plain dicts that nothing may change (build a new one
    with :func:`dataclasses.replace`). Only :meth:`from_dict` checks the rules; constructing one does not."""

    model: ModelInfo
    embed_dim: int
    class_names: tuple[str, ...]
    preprocess: PreprocessCfg
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: dict[str, FileEntry]
    schema_version: int = SCHEMA_VERSION
    clap_edge_version: str | None = None
    alpha: float = 0.0
    logit_scale: float | None = None
    templates: tuple[str, ...] = ()
    opset: int | None = None
    flops_per_image: float | None = None
    variants: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift: dict[str, dict[str, Any]] | None = None
    engines: tuple[EngineEntry, ...] | None = None
    classes: ClassesInfo = field(default_factory=ClassesInfo)
    text: TextInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown top-level keys, kept as they are

    def __post_init__(self):
        for name in ("class_names", "inputs", "outputs", "templates"):  # callers may pass lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.engines is not None:
            object.__setattr__(self, "engines", tuple(self.engines))

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """Validate ``data`` (parsed JSON) completely; raises :class:`ManifestFieldError` naming the field."""
        return _parse_manifest(data)

    # ---- typed views (no caller walks the JSON) ----

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(3, H, W) of the model input."""
        return tuple(int(s) for s in self.inputs[0].shape[1:])  # type: ignore[return-value]

    def sha256(self, name: str) -> str | None:
        """The listed sha256 of bundle file ``name`` (None if not listed)."""
        entry = self.files.get(name)
        return None if entry is None else entry.sha256

    def engine_entries(self, engine: str | None = None, precision: str | None = None) -> tuple[EngineEntry, ...]:
        """The ``engines`` entries, optionally of one kind and precision."""
        return tuple(e for e in self.engines or () if (engine is None or e.engine == engine)
                     and (precision is None or e.precision == precision))


# ---- JSON in and out -------------------------------------------------------------------------


def loads(text: str | bytes) -> Any:
    """Parse manifest JSON: size-bounded, NaN/Infinity refused, nesting depth bounded (no RecursionError)."""
    if len(text) > LIMITS["manifest_bytes"]:
        raise ManifestFieldError("", f"{len(text):,} bytes, more than the {LIMITS['manifest_bytes']:,} allowed")

    def no_constant(name: str):
        raise ManifestFieldError("", f"{name} is not a finite number (JSON has no NaN or Infinity)")

    class DuplicateKey(Exception):  # not a ValueError: the number handler below must not rewrap it
        pass

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # a key given twice means one thing to a reader keeping the last and another to one keeping the first
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(json.dumps(key, ensure_ascii=False))
            seen.add(key)
        return dict(pairs)

    def bounded_int(digits: str) -> int:  # int() of a 5000-digit string raises a bare ValueError mid-parse
        if len(digits.lstrip("-")) > 40:
            raise ManifestFieldError("", f"an integer of {len(digits.lstrip('-')):,} digits ({digits[:12]}...); "
                                         "no manifest number needs more than 40")
        return int(digits)

    try:
        data = json.loads(text, parse_constant=no_constant, parse_int=bounded_int, object_pairs_hook=unique_keys)
    except ManifestFieldError:  # raised by no_constant / bounded_int: already the one line (a ValueError too)
        raise
    except RecursionError:
        raise ManifestFieldError("", f"nested more than {LIMITS['depth']} levels deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestFieldError("", f"not valid JSON ({e})") from None
    except DuplicateKey as e:
        raise ManifestFieldError("", f"not valid JSON (duplicate key {e})") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits (no JSON reader here holds it)
        raise ManifestFieldError("", f"not valid JSON (a number too long to read: {str(e)[:60]})") from None
    _check_json(data, "", 0)
    return data


def dumps(manifest: "Manifest | dict[str, Any]") -> str:
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def to_json(value: Any) -> Any:
    """Dataclasses (with their ``extra`` merged in, None-valued optional sections dropped) -> JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        out: dict[str, Any] = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if f.name == "extra":
                out.update(to_json(v))
            elif not (v is None and f.name in _DROP_IF_NONE):
                out[f.name] = to_json(v)
        return out
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


_DROP_IF_NONE = {"drift", "engines", "sidecar", "clap_edge_version", "text"}


def check_unique_names(names: list[str], what: str = "class_names") -> None:
    """Names must differ after Unicode NFC normalisation; the message names both spellings."""
    dup = nfc_duplicate(names)
    if dup:
        raise ManifestFieldError(what, describe_duplicate(*dup))


# ---- validation --------------------------------------------------------------------------------


def check_version(data: Any) -> int:
    """The schema_version, if this code reads it (checked first: a newer layout may differ anywhere)."""
    from clap_edge import __version__

    version = _obj(data, "").get("schema_version")
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if not _is_int(version) or version < 1:
        raise ManifestFieldError("schema_version", f"must be an integer >= 1, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ManifestFieldError("schema_version", f"{version} is newer than this clap-edge ({__version__}) "
                                 f"reads (<= {SCHEMA_VERSION}); upgrade clap-edge")
    if version < MIN_SCHEMA_VERSION:
        raise ManifestFieldError("schema_version", f"{version} is older than this clap-edge reads "
                                 f"(>= {MIN_SCHEMA_VERSION}); {REEXPORT_HINT}")
    return version


def _parse_manifest(d: Any) -> Manifest:
    _check_json(d, "", 0)
    obj = _obj(d, "")
    version = check_version(obj)
    for key in ("model", "class_names", "embed_dim", "logit_scale", "preprocess", "inputs", "outputs", "files"):
        if key not in obj:
            raise ManifestFieldError(key, "is missing")
    files = {name: _file_entry(name, e) for name, e in _obj(obj["files"], "files").items()}
    if len(files) > LIMITS["files"]:
        raise ManifestFieldError("files", f"lists {len(files)} files, more than {LIMITS['files']}")
    if CLASSES_FILE not in files:
        raise ManifestFieldError("files", f"does not list {CLASSES_FILE}")
    names = _str_list(obj["class_names"], "class_names", LIMITS["classes"], nonempty=True)
    check_unique_names(names)
    embed_dim = _int(obj["embed_dim"], "embed_dim", 1, LIMITS["embed_dim"])
    pre = _preprocess(obj["preprocess"])
    m = Manifest(
        schema_version=version,
        clap_edge_version=_opt(obj.get("clap_edge_version"), "clap_edge_version", _str),
        model=_model(obj["model"]),
        embed_dim=embed_dim,
        class_names=names,
        preprocess=pre,
        inputs=_tensors(obj["inputs"], "inputs"),
        outputs=_tensors(obj["outputs"], "outputs"),
        files=files,
        alpha=_num(obj.get("alpha", 0.0), "alpha"),
        logit_scale=_num(obj["logit_scale"], "logit_scale", lo=0.0, open_lo=True),
        templates=_str_list(obj.get("templates", []), "templates", LIMITS["templates"]),
        opset=_opt(obj.get("opset"), "opset", lambda v, p: _int(v, p, 1, 1000)),
        flops_per_image=_opt(obj.get("flops_per_image"), "flops_per_image", lambda v, p: _num(v, p, lo=0.0)),
        variants=_variants(obj.get("variants", {}), files),
        parity=_free_sections(obj.get("parity", {}), "parity"),
        drift=_opt(obj.get("drift"), "drift", _free_sections),
        engines=_opt(obj.get("engines"), "engines", lambda v, p: _engines(v, p, files)),
        classes=_classes(obj.get("classes", {})),
        text=_opt(obj.get("text"), "text", lambda v, p: _text(v, p, files)),
        extra={k: v for k, v in obj.items() if k not in _KNOWN},
    )
    _check_shapes(m)
    return m


_KNOWN = {f.name for f in fields(Manifest)} - {"extra"}


def _check_shapes(m: Manifest) -> None:
    """The input matches the preprocess size; outputs named and sized by the class list and embed_dim."""
    image = m.inputs[0]
    if image.name != INPUT_IMAGE:
        raise ManifestFieldError("inputs[0].name", f"must be {INPUT_IMAGE!r}, got {image.name!r}")
    want = [3, *m.preprocess.size]
    if len(image.shape) != 4 or list(image.shape[1:]) != want:
        raise ManifestFieldError("inputs[0].shape", f"{list(image.shape)} does not match [N, {want[0]}, {want[1]}, "
                                 f"{want[2]}] (preprocess.size {list(m.preprocess.size)})")
    outputs = {o.name: (i, o) for i, o in enumerate(m.outputs)}
    if OUTPUT_LOGITS in outputs:  # schema 4: the model ends at the embedding; logits are the runtime's
        raise ManifestFieldError(f"outputs[{outputs[OUTPUT_LOGITS][0]}].name", f"{OUTPUT_LOGITS!r} is not a model "
                                 f"output in schema_version {SCHEMA_VERSION} (the model ends at the embedding; the "
                                 f"runtime applies {CLASSES_FILE}); {REEXPORT_HINT}")
    for name, width, what in ((OUTPUT_EMBEDDING, m.embed_dim, "embedding dims"),):
        if name not in outputs:
            raise ManifestFieldError("outputs", f"lists no {name!r} output")
        i, spec = outputs[name]
        if len(spec.shape) != 2:
            raise ManifestFieldError(f"outputs[{i}].shape", f"{name!r} must be 2-D [N, width], got {list(spec.shape)}")
        if _is_int(spec.shape[1]) and spec.shape[1] != width:
            raise ManifestFieldError(f"outputs[{i}].shape", f"{name!r} has width {spec.shape[1]} but the bundle "
                                     f"has {width} {what}")


def _classes(v: Any) -> ClassesInfo:
    o = _obj(v, "classes")
    unknown = sorted(set(o) - {"bias", "provenance"})
    if unknown:
        raise ManifestFieldError(f"classes.{unknown[0]}", "is not a classes field (bias, provenance)")
    bias = o.get("bias", False)
    if not isinstance(bias, bool):
        raise ManifestFieldError("classes.bias", f"must be true or false, got {_kind(bias)}")
    return ClassesInfo(bias=bias, provenance=_obj(o.get("provenance", {}), "classes.provenance"))


def _text(v: Any, path: str, files: dict[str, FileEntry]) -> TextInfo:
    o = _obj(v, path)
    for key in ("file", "context_length", "tokenizer"):
        if key not in o:
            raise ManifestFieldError(f"{path}.{key}", "is missing")
    name = _str(o["file"], f"{path}.file")
    _check_file_name(name, f"{path}.file")
    if name not in files:
        raise ManifestFieldError(f"{path}.file", f"names {name!r}, which files does not list")
    tok = _obj(o["tokenizer"], f"{path}.tokenizer")
    for role, file in _obj(tok.get("files", {}), f"{path}.tokenizer.files").items():
        _check_file_name(_str(file, f"{path}.tokenizer.files.{role}"), f"{path}.tokenizer.files.{role}")
        if file not in files:
            raise ManifestFieldError(f"{path}.tokenizer.files.{role}", f"names {file!r}, which files does not list")
    return TextInfo(file=name, context_length=_int(o["context_length"], f"{path}.context_length", 1, 65_536),
                    tokenizer=tok, extra={k: x for k, x in o.items() if k not in ("file", "context_length", "tokenizer")})


def _model(v: Any) -> ModelInfo:
    o = _obj(v, "model")
    if "model_name" not in o:
        raise ManifestFieldError("model.model_name", "is missing")
    head = None
    if o.get("head") is not None:
        h = _obj(o["head"], "model.head")
        for key in ("alpha", "latent_dim", "activation"):
            if key not in h:
                raise ManifestFieldError(f"model.head.{key}", "is missing")
        head = HeadInfo(alpha=_num(h["alpha"], "model.head.alpha"),
                        latent_dim=_int(h["latent_dim"], "model.head.latent_dim", 1, LIMITS["embed_dim"]),
                        activation=_str(h["activation"], "model.head.activation"),
                        extra={k: v for k, v in h.items() if k not in ("alpha", "latent_dim", "activation")})
    return ModelInfo(model_name=_str(o["model_name"], "model.model_name"),
                     pretrained=_opt(o.get("pretrained"), "model.pretrained", _str), head=head,
                     extra={k: v for k, v in o.items() if k not in ("model_name", "pretrained", "head")})


def _preprocess(v: Any) -> PreprocessCfg:
    o = _obj(v, "preprocess")
    allowed = {f.name for f in fields(PreprocessCfg)}
    unknown = sorted(set(o) - allowed)
    if unknown:
        raise ManifestFieldError(f"preprocess.{unknown[0]}", "is not a preprocess field")
    missing = sorted(allowed - set(o))
    if missing:
        raise ManifestFieldError(f"preprocess.{missing[0]}", "is missing")
    size = _list(o["size"], "preprocess.size", 2, 2)
    hw = tuple(_int(s, f"preprocess.size[{i}]", 1, LIMITS["image_side"]) for i, s in enumerate(size))
    mean = tuple(_num(x, f"preprocess.mean[{i}]") for i, x in enumerate(_list(o["mean"], "preprocess.mean", 3, 3)))
    std = tuple(_num(x, f"preprocess.std[{i}]", lo=0.0, open_lo=True)
                for i, x in enumerate(_list(o["std"], "preprocess.std", 3, 3)))
    if o["mode"] != "RGB":
        raise ManifestFieldError("preprocess.mode", f"must be 'RGB', got {o['mode']!r}")
    return PreprocessCfg(size=hw, mode="RGB", mean=mean, std=std,  # type: ignore[arg-type]
                         interpolation=_enum(o["interpolation"], "preprocess.interpolation", INTERPOLATIONS),
                         resize_mode=_enum(o["resize_mode"], "preprocess.resize_mode", RESIZE_MODES),
                         fill_color=_int(o["fill_color"], "preprocess.fill_color", 0, 255))


def _tensors(v: Any, path: str) -> list[TensorSpec]:
    specs = []
    for i, t in enumerate(_list(v, path, 1, 16)):
        p = f"{path}[{i}]"
        o = _obj(t, p)
        if set(o) - {"name", "shape", "dtype"} or "name" not in o or "shape" not in o:
            raise ManifestFieldError(p, "must be {name, shape, dtype}")
        shape = [_dim(s, f"{p}.shape[{j}]") for j, s in enumerate(_list(o["shape"], f"{p}.shape", 1, 8))]
        specs.append(TensorSpec(_str(o["name"], f"{p}.name"), shape, _enum(o.get("dtype", "float32"), f"{p}.dtype", DTYPES)))
    return specs


def _dim(v: Any, path: str) -> int | str:
    if isinstance(v, str) and 0 < len(v) <= 64:
        return v
    return _int(v, path, 1, 1 << 31)


def _file_entry(name: str, v: Any) -> FileEntry:
    p = f"files[{name!r}]"
    _check_file_name(name, p)
    o = _obj(v, p)
    if set(o) != {"sha256", "bytes"}:
        raise ManifestFieldError(p, f"must be exactly {{sha256, bytes}}, got {sorted(o)}")
    if not isinstance(o["sha256"], str) or not SHA256.match(o["sha256"]):
        raise ManifestFieldError(f"{p}.sha256", "must be 64 lower-case hex digits")
    return FileEntry(o["sha256"], _int(o["bytes"], f"{p}.bytes", 0, 1 << 50))


def _check_file_name(name: str, path: str) -> None:
    problem = file_name_problem(name)  # textrules: the same rule as the schema's file_name and the C++ reader
    if problem:
        raise ManifestFieldError(path, f"names a path outside the bundle or not a plain one ({problem}); a file "
                                 "name is a relative POSIX path without empty, '.' or '..' parts, backslashes or "
                                 "control characters")
    if name in META_FILES:
        raise ManifestFieldError(path, f"{name} is managed by the bundle itself and must not be listed")


def _variants(v: Any, files: dict[str, FileEntry]) -> dict[str, str]:
    out = {}
    for name, file in _obj(v, "variants").items():
        out[name] = _str(file, f"variants.{name}")
        _check_file_name(file, f"variants.{name}")
        suffix = PurePosixPath(VARIANT_FILES[name]).suffix if name in VARIANT_FILES else None
        if suffix and not file.endswith(suffix):  # a runtime picks its reader by the variant, not by sniffing
            raise ManifestFieldError(f"variants.{name}", f"names {file!r}, but a {name} variant is a {suffix} file")
        if file not in files:
            raise ManifestFieldError(f"variants.{name}", f"names {file!r}, which files does not list")
    return out


def _engines(v: Any, path: str, files: dict[str, FileEntry]) -> list[EngineEntry]:
    out = []
    for i, e in enumerate(_list(v, path, 0, 256)):
        p = f"{path}[{i}]"
        o = _obj(e, p)
        for key in ("file", "engine", "precision"):
            if key not in o:
                raise ManifestFieldError(f"{p}.{key}", "is missing")
        entry = EngineEntry(file=_str(o["file"], f"{p}.file"), engine=_str(o["engine"], f"{p}.engine"),
                            precision=_str(o["precision"], f"{p}.precision"),
                            sidecar=_opt(o.get("sidecar"), f"{p}.sidecar", _str),
                            extra={k: x for k, x in o.items() if k not in ("file", "engine", "precision", "sidecar")})
        for key in ("file", "sidecar"):
            name = getattr(entry, key)
            if name is not None:
                _check_file_name(name, f"{p}.{key}")
            if name is not None and name not in files:
                raise ManifestFieldError(f"{p}.{key}", f"names {name!r}, which files does not list")
        out.append(entry)
    return out


def _free_sections(v: Any, path: str) -> dict[str, dict[str, Any]]:
    """{name: object}: the object's content is free-form JSON (already checked finite and depth-bounded)."""
    return {k: _obj(x, f"{path}.{k}") for k, x in _obj(v, path).items()}


# ---- small checkers -------------------------------------------------------------------------


def _check_json(v: Any, path: str, depth: int) -> None:
    """Plain JSON values only, nesting bounded, every number finite (iterative: no recursion limit hit)."""
    stack = [(v, path, depth)]
    while stack:
        v, path, depth = stack.pop()
        if depth > LIMITS["depth"]:
            raise ManifestFieldError(path, f"nested more than {LIMITS['depth']} levels deep")
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ManifestFieldError(path, f"has a non-string key {k!r}")
                if _SURROGATE.search(k):
                    raise ManifestFieldError(path, "has a key with a lone surrogate (not valid Unicode)")
                stack.append((x, f"{path}.{k}" if path else k, depth + 1))
        elif isinstance(v, list):
            stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, str) and _SURROGATE.search(v):  # "\ud800" in JSON text: not valid Unicode
            raise ManifestFieldError(path, f"contains a lone surrogate U+{ord(_SURROGATE.search(v)[0]):04X} "
                                     "(not valid Unicode)")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ManifestFieldError(path, f"{v} is not a finite number")
        elif not (v is None or isinstance(v, (str, int, float, bool))):
            raise ManifestFieldError(path, f"{type(v).__name__} is not a JSON value")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _obj(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestFieldError(path, f"must be an object, got {_kind(v)}")
    return v


def _list(v: Any, path: str, lo: int, hi: int) -> list[Any]:
    if not isinstance(v, list):
        raise ManifestFieldError(path, f"must be a list, got {_kind(v)}")
    if not lo <= len(v) <= hi:
        raise ManifestFieldError(path, f"must have {lo}..{hi} items, has {len(v)}" if lo != hi
                                 else f"must have {lo} items, has {len(v)}")
    return v


def _str(v: Any, path: str) -> str:
    """A name: textrules' rule (non-empty, bounded, no control characters or separators, NFC quick check YES)."""
    if not isinstance(v, str):
        raise ManifestFieldError(path, f"must be a non-empty string of at most {LIMITS['name_chars']} "
                                 f"characters, got {_kind(v)}")
    problem = name_problem(v, LIMITS["name_chars"])
    if problem:
        raise ManifestFieldError(path, problem)
    return v


def _str_list(v: Any, path: str, limit: int, nonempty: bool = False) -> list[str]:
    items = _list(v, path, 1 if nonempty else 0, limit)
    return [_str(x, f"{path}[{i}]") for i, x in enumerate(items)]


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # 2.0 is an integer in JSON (and in JSON Schema)
    if not _is_int(v) or not lo <= v <= hi:
        raise ManifestFieldError(path, f"must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _num(v: Any, path: str, lo: float | None = None, open_lo: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ManifestFieldError(path, f"must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if open_lo else v < lo):
        raise ManifestFieldError(path, f"must be {'>' if open_lo else '>='} {lo:g}, got {v!r}")
    return float(v)


def _enum(v: Any, path: str, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise ManifestFieldError(path, f"must be one of {list(allowed)}, got {v!r}")
    return v


def _opt(v: Any, path: str, check) -> Any:
    return None if v is None else check(v, path)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 40):
        return repr(v)
    return type(v).__name__
