"""Engine sidecars (``sidecar.schema.json``) and engine selection: which compiled engine fits this machine.

A compiled engine (TensorRT plan, AOTInductor package) runs only where it was built: the same GPU
(or CPU architecture and vector ISA), the same library version. Each engine file in ``engines/`` has
a JSON sidecar saying so and recording two digests: the engine file's own sha256 and its source
model's. Both files are listed (with sha256) in the manifest's ``files``; the manifest's ``engines``
list indexes them. Selection picks the engine whose sidecar matches this machine and refuses, each
with its reason: a stale engine (its source model is gone from the bundle or was replaced), a swapped
one (its bytes are not the engine its sidecar describes), and when none fits says what it found.

Torch-free and TensorRT-free: the runtime imports this on devices that have neither; the torch-free
device lookups (``nvidia-smi``, cuda-python) are here too.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clap_edge.core.errors import BundleError
from clap_edge.core.io import read_regular
from clap_edge.core.machine import cpu_info
from clap_edge.export.bundle.manifest import SHA256, EngineEntry, ManifestFieldError, _check_file_name

ENGINES_DIR = "engines"
# engine kind -> (the library whose version must match, file extension)
ENGINE_KINDS: dict[str, tuple[str, str]] = {"tensorrt": ("tensorrt", ".plan"), "aoti": ("torch", ".pt2")}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TENSORRT_MISSING = ("TensorRT is not installed here (Python module 'tensorrt' not importable); install the [gpu] "
                    "extra from NVIDIA's index: pip install 'clap-edge[gpu]' --extra-index-url https://pypi.nvidia.com")
SIDECAR_MAX_BYTES = 1 << 20  # a sidecar is a few hundred bytes
SIDECAR_FIELDS = ("engine", "file", "precision", "batch", "device", "library", "library_version", "source_model",
                  "source_sha256", "engine_sha256")  # required (sidecar.schema.json)

# /proc/cpuinfo flags behind each token of a vector ISA as torch inductor names it ("avx512 avx512_vnni
# amx_tile"); a CPU engine compiled for it uses those instructions unconditionally. Tokens not listed
# here are cpuinfo flags of the same name.
ISA_FLAGS = {"avx512": ("avx512f", "avx512dq", "avx512vl", "avx512bw"), "avx2": ("avx2", "fma"),
             "neon": ("asimd",), "asimd": ("asimd",)}

__all__ = ["ENGINES_DIR", "ENGINE_KINDS", "PRECISIONS", "TENSORRT_MISSING", "DeviceInfo", "EngineSidecar",
           "EngineChoice", "EngineMismatchError", "engine_basename", "mismatch", "select_engine", "engine_entries",
           "load_sidecar", "stale_reason", "digest_reason", "usable_reason", "host_cpu", "visible_gpus",
           "cudart_device", "parse_batch_profile"]


class EngineMismatchError(BundleError):
    """No engine in the bundle fits this machine (the message lists what was found and why each does not fit)."""


@dataclass(frozen=True)
class DeviceInfo:
    """A device an engine was built for (or that we run on)."""

    type: str  # "cpu" or "cuda"
    name: str  # GPU name ("NVIDIA H100 80GB HBM3") or CPU model
    compute_capability: str | None = None  # CUDA: "9.0"
    arch: str | None = None  # CPU: platform.machine(), e.g. "x86_64"
    isa: str | None = None  # CPU engine: the vector ISA it was compiled for ("avx512", "avx2")
    flags: tuple[str, ...] = field(default=(), compare=False)  # host CPU only: its /proc/cpuinfo flags

    def slug(self) -> str:
        """A file-name-safe label: ``nvidia-h100-80gb-hbm3-sm90`` / ``cpu-x86_64-avx512``."""
        if self.type == "cuda":
            cc = (self.compute_capability or "").replace(".", "")
            return f"{_slugify(self.name)}-sm{cc}"
        return "-".join(p for p in ("cpu", self.arch, *(self.isa or "").split()) if p)

    def describe(self) -> str:
        if self.type == "cuda":
            return f"{self.name} (compute capability {self.compute_capability})"
        isa = f", {self.isa}" if self.isa else ""
        return f"CPU {self.arch}{isa} ({self.name})"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("flags")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DeviceInfo":
        return cls(type=str(d["type"]), name=str(d.get("name", "")), compute_capability=d.get("compute_capability"),
                   arch=d.get("arch"), isa=d.get("isa"))


@dataclass(frozen=True)
class EngineSidecar:
    """The JSON written beside each engine file (``sidecar.schema.json`` states the same rules)."""

    engine: str  # "tensorrt" | "aoti"
    file: str  # bundle-relative engine file
    precision: str
    batch: tuple[int, int, int]  # (min, opt, max) of the optimisation profile / dynamic batch range
    device: DeviceInfo
    library: str  # "tensorrt" | "torch"
    library_version: str
    source_model: str  # the bundle file it was built from (model.onnx, model.qdq.onnx, model.pt2)
    source_sha256: str
    engine_sha256: str  # the engine file's own sha256: a swapped engine is refused even if re-listed
    built_utc: str = ""
    build_seconds: float = 0.0
    parity: dict[str, Any] = field(default_factory=dict)  # vs ONNX Runtime (CPU, fp32) on the calibration images
    options: dict[str, Any] = field(default_factory=dict)  # workspace, timing cache, fp32 layers...
    clap_edge_version: str = ""

    def __post_init__(self):
        object.__setattr__(self, "batch", tuple(self.batch))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch"] = list(self.batch)
        d["device"] = self.device.to_json()
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> "EngineSidecar":
        """Check ``d`` by the rules of ``sidecar.schema.json`` (plus batch order); one-line BundleError naming
        ``where`` and the field."""
        if not isinstance(d, dict):
            raise BundleError(f"{where}: an engine sidecar must be a JSON object")
        missing = [k for k in SIDECAR_FIELDS if k not in d]
        if missing:
            hint = "; rebuild the engine with clap-edge build-engine" if missing == ["engine_sha256"] else ""
            raise BundleError(f"{where}: engine sidecar is missing fields {missing}{hint}")
        try:
            _check_sidecar(d)
        except ManifestFieldError as e:
            raise BundleError(f"{where}: engine sidecar field {e.field}: {e.problem}") from None
        except ValueError as e:
            raise BundleError(f"{where}: engine sidecar {e}") from None
        return cls(engine=d["engine"], file=d["file"], precision=d["precision"], batch=tuple(d["batch"]),
                   device=DeviceInfo.from_json(d["device"]), library=d["library"],
                   library_version=d["library_version"], source_model=d["source_model"],
                   source_sha256=d["source_sha256"], engine_sha256=d["engine_sha256"],
                   built_utc=d.get("built_utc", ""), build_seconds=float(d.get("build_seconds", 0.0)),
                   parity=dict(d.get("parity") or {}), options=dict(d.get("options") or {}),
                   clap_edge_version=d.get("clap_edge_version", ""))

    def manifest_entry(self, sidecar_file: str | None) -> EngineEntry:
        """The manifest's ``engines`` entry for this engine (an index; the sidecar is the full record)."""
        return EngineEntry(file=self.file, engine=self.engine, precision=self.precision, sidecar=sidecar_file,
                           extra={"batch": list(self.batch), "device": self.device.slug(), "gpu": self.device.name
                                  if self.device.type == "cuda" else None, "library_version": self.library_version})


def _check_sidecar(d: dict[str, Any]) -> None:
    """The sidecar's fields, as ``sidecar.schema.json`` states them (raises ValueError naming the field)."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ValueError(f"field {key} must be {what}, got {_short(d.get(key))}")

    need(isinstance(d["engine"], str) and d["engine"] in ENGINE_KINDS, "engine", f"one of {list(ENGINE_KINDS)}")
    need(isinstance(d["precision"], str) and d["precision"] in PRECISIONS, "precision", f"one of {list(PRECISIONS)}")
    batch = d["batch"]
    need(isinstance(batch, list) and len(batch) == 3 and all(_is_int(b) for b in batch)
         and 1 <= batch[0] <= batch[1] <= batch[2], "batch", "[min, opt, max] with 1 <= min <= opt <= max")
    for key in ("file", "source_model"):
        need(isinstance(d[key], str), key, "a file name")
        _check_file_name(d[key], key)
    for key in ("library", "library_version"):
        need(isinstance(d[key], str) and 0 < len(d[key]) <= 1024, key, "a non-empty string")
    for key in ("source_sha256", "engine_sha256"):
        need(isinstance(d[key], str) and SHA256.match(d[key]) is not None, key, "64 lower-case hex digits")
    device = d["device"]
    need(isinstance(device, dict) and device.get("type") in ("cpu", "cuda"), "device", "{type: cpu|cuda, ...}")
    for key in ("name", "compute_capability", "arch", "isa"):
        need(device.get(key) is None or isinstance(device[key], str), f"device.{key}", "a string")
    for key in ("built_utc", "clap_edge_version"):
        need(isinstance(d.get(key, ""), str), key, "a string")
    for key in ("parity", "options"):
        need(isinstance(d.get(key, {}), dict), key, "an object")
    seconds = d.get("build_seconds", 0.0)
    need(isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0, "build_seconds",
         "a number >= 0")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class EngineChoice:
    """The engine selected for this machine."""

    entry: EngineEntry
    sidecar: EngineSidecar
    path: Path  # the engine file, sha256-checked


def parse_batch_profile(text: str) -> tuple[int, int, int]:
    """``"1,8,64"`` -> (1, 8, 64), checked min <= opt <= max; a single ``"8"`` is (8, 8, 8)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"batch profile {text!r}: expected MIN,OPT,MAX integers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ValueError(f"batch profile {text!r}: expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX")
    return values[0], values[1], values[2]


def engine_basename(engine: str, device: DeviceInfo, precision: str, batch: tuple[int, int, int] | list[int]) -> str:
    """``engines/<engine>-<device>-<precision>-b<min>-<opt>-<max>`` (the engine file adds its extension,
    the sidecar ``.json``): one name per engine, GPU, precision and profile, so several coexist."""
    lo, opt, hi = batch
    return f"{ENGINES_DIR}/{engine}-{device.slug()}-{precision}-b{lo}-{opt}-{hi}"


def host_cpu() -> DeviceInfo:
    """This machine's CPU (model, architecture, flags), read without torch."""
    name, flags = cpu_info()
    return DeviceInfo(type="cpu", name=name, arch=platform.machine(), flags=tuple(flags))


@functools.lru_cache(maxsize=1)
def visible_gpus() -> tuple[DeviceInfo, ...]:
    """GPUs ``nvidia-smi`` lists (name, compute capability); empty without a driver (no GPU library needed)."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    gpus = []
    for line in out.stdout.strip().splitlines():
        name, _, cc = line.rpartition(",")
        if name.strip():
            gpus.append(DeviceInfo(type="cuda", name=name.strip(), compute_capability=cc.strip()))
    return tuple(gpus)


def cudart_device(index: int = 0) -> DeviceInfo:
    """The CUDA device ``index`` through cuda-python (``cuda.bindings.runtime``); RuntimeError if unusable."""
    from cuda.bindings import runtime as cudart

    err, props = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA device {index} is not usable: {cudart.cudaGetErrorString(err)[1].decode()}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(type="cuda", name=name.strip("\x00 "), compute_capability=f"{props.major}.{props.minor}")


def mismatch(sidecar: EngineSidecar, host: DeviceInfo, library_version: str | None) -> str | None:
    """Why the engine described by ``sidecar`` cannot run on ``host`` with ``library_version`` (None: it can)."""
    built = sidecar.device
    if built.type != host.type:
        return f"built for {built.type}, this is {host.type}"
    if library_version is not None and not same_version(sidecar.library_version, library_version):
        return f"built with {sidecar.library} {sidecar.library_version}, this has {library_version}"
    if built.type == "cuda":
        if built.compute_capability != host.compute_capability:
            return (f"built for compute capability {built.compute_capability} ({built.name}), "
                    f"this GPU is {host.compute_capability} ({host.name})")
        if built.name != host.name:
            return f"built on {built.name}, this GPU is {host.name}"
        return None
    if built.arch != host.arch:
        return f"built for {built.arch}, this CPU is {host.arch}"
    needed = [f for token in (built.isa or "").split() for f in ISA_FLAGS.get(token, (token,)) if f not in host.flags]
    if host.flags and needed:
        return f"compiled for {built.isa}, this CPU lacks {', '.join(needed)}"
    return None


def same_version(a: str, b: str) -> bool:
    """Equal versions; a side without a local part ("2.4.1" from package metadata) matches any local
    build of the same release ("2.4.1+cu124" from ``torch.__version__``), since it says nothing about it."""
    if a == b:
        return True
    (pa, _, la), (pb, _, lb) = a.partition("+"), b.partition("+")
    return pa == pb and not (la and lb)


def engine_entries(bundle: Any, engine: str | None = None, precision: str | None = None) -> tuple[EngineEntry, ...]:
    """The manifest's ``engines`` entries (optionally of one kind / precision); each must name its sidecar."""
    entries = bundle.manifest.engine_entries(engine, precision)
    for e in entries:
        if e.sidecar is None:
            raise BundleError(f"{bundle.label}: manifest engines entry for {e.file!r} names no sidecar")
    return entries


def load_sidecar(bundle: Any, entry: EngineEntry) -> EngineSidecar:
    """The sidecar of a manifest entry (sha256-checked), which must agree with the entry."""
    path = bundle.file(entry.sidecar)
    where = f"{bundle.label}/{entry.sidecar}"
    try:
        raw = read_regular(path, SIDECAR_MAX_BYTES)
    except (OSError, ValueError) as e:
        raise BundleError(f"{where}: cannot read the engine sidecar ({e})") from None
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{where}: engine sidecar is not valid JSON ({str(e).splitlines()[0][:200]})") from None
    sidecar = EngineSidecar.from_json(data, where)
    for key in ("file", "engine", "precision"):
        if getattr(sidecar, key) != getattr(entry, key):
            raise BundleError(f"{where}: sidecar says {key} {getattr(sidecar, key)!r}, "
                              f"the manifest {getattr(entry, key)!r}")
    return sidecar


def _no_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def stale_reason(bundle: Any, sidecar: EngineSidecar) -> str | None:
    """Why the engine no longer matches this bundle's model (None: built from the model the bundle holds)."""
    listed = bundle.manifest.sha256(sidecar.source_model)
    if listed is None:
        return f"built from {sidecar.source_model}, which this bundle no longer lists"
    if listed != sidecar.source_sha256:
        return f"built from a different {sidecar.source_model} (sha256 {sidecar.source_sha256[:12]}...)"
    source = Path(bundle.root) / sidecar.source_model
    if source.is_symlink() or not source.is_file():
        return f"built from {sidecar.source_model}, which is missing from the bundle"
    return None


def digest_reason(bundle: Any, sidecar: EngineSidecar) -> str | None:
    """Why the engine file is not the engine its sidecar describes (None: its listed sha256 is the recorded one;
    :meth:`Bundle.file` then checks the bytes against that listing before the engine is handed out)."""
    listed = bundle.manifest.sha256(sidecar.file)
    if listed != sidecar.engine_sha256:
        return (f"its bytes (sha256 {str(listed)[:12]}...) are not the engine its sidecar records "
                f"(engine_sha256 {sidecar.engine_sha256[:12]}...): it was replaced; rebuild it")
    return None


def usable_reason(bundle: Any, sidecar: EngineSidecar, hosts: list[DeviceInfo], library_version: str | None
                  ) -> str | None:
    """Why this engine cannot run here (stale, swapped, or built for another device / library); None: it can."""
    why = stale_reason(bundle, sidecar) or digest_reason(bundle, sidecar)
    if why is None:
        whys = [mismatch(sidecar, host, library_version) for host in hosts]
        if None in whys:
            return None
        why = "; ".join(w for w in whys if w) or "no device here"
    return why


def select_engine(bundle: Any, engine: str, precision: str, hosts: list[DeviceInfo],
                  library_version: str | None) -> EngineChoice:
    """The first engine of kind ``engine`` at ``precision`` that fits one of ``hosts`` (best first).

    The engine file is sha256-checked before it is returned. Raises :class:`EngineMismatchError`
    naming every engine found and why it cannot run, or how to build one when there is none."""
    entries = engine_entries(bundle, engine)
    if not entries:
        raise EngineMismatchError(f"{bundle.label}: no {engine} engine in this bundle; build one with: "
                                  f"clap-edge build-engine {bundle.label} --engine {engine} --precision {precision}")
    reasons = []
    for entry in entries:
        if entry.precision != precision:
            reasons.append(f"{entry.file} ({entry.precision}, not {precision})")
            continue
        sidecar = load_sidecar(bundle, entry)
        why = usable_reason(bundle, sidecar, hosts, library_version)
        if why is None:
            return EngineChoice(entry, sidecar, bundle.file(entry.file))  # bytes sha256-checked here
        reasons.append(f"{entry.file} ({why})")
    here = " / ".join(h.describe() for h in hosts) or "no device"
    lib = f", {ENGINE_KINDS[engine][0]} {library_version}" if library_version else ""
    raise EngineMismatchError(f"{bundle.label}: no {engine} {precision} engine fits this machine ({here}{lib}); "
                              f"found: {'; '.join(reasons)}")


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"
