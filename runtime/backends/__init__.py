"""Backend registry: name -> runner class, imported lazily so no backend library loads until used.

A backend is named by what runs the model (``onnxruntime``, ``openvino``, ``torch``...); the
model variant it runs is its *precision* (``RunnerOptions.precision``, ``--precision``). A spec
string may carry both: ``onnxruntime:int8``. The older names that encoded the variant
(``onnxruntime-int8``) are kept as aliases so existing scripts still run.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

from clap_edge.core.errors import BackendUnavailableError
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.backends.base import Runner, RunnerOptions, RunnerOutput

# name -> (module, class). Each module imports its library inside the runner, not at import.
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("clap_edge.runtime.backends.onnxruntime.runner", "OnnxRuntimeRunner"),
    "torch": ("clap_edge.runtime.backends.torch.runner", "TorchRunner"),
    "torch-compile": ("clap_edge.runtime.backends.torch.compile_runner", "TorchCompileRunner"),
    "openvino": ("clap_edge.runtime.backends.openvino.runner", "OpenVINORunner"),
    # compiled engines from the bundle's engines/ folder (clap-edge build-engine), picked by sidecar
    "tensorrt": ("clap_edge.runtime.backends.tensorrt.runner", "TensorRTRunner"),
    "aoti": ("clap_edge.runtime.backends.aoti.runner", "AotiRunner"),
    # phones and small boards, verified here on their x86 CPU kernels: ExecuTorch (.pte, XNNPACK) and LiteRT
    "executorch": ("clap_edge.runtime.backends.executorch.runner", "ExecuTorchRunner"),
    "litert": ("clap_edge.runtime.backends.litert.runner", "LiteRTRunner"),
}

# Older names -> (backend, precision).
ALIASES: dict[str, tuple[str, str]] = {
    "onnxruntime-int8": ("onnxruntime", "int8"),
    "onnxruntime-fp16": ("onnxruntime", "fp16"),
}

# Preference when no bench result says otherwise: fastest-first on typical hardware, default precision only.
# torch-compile is never picked statically (minutes of compile on first use); int8 changes results.
# tensorrt only counts when the bundle holds an engine built for this GPU and TensorRT version;
# aoti (built for one device) is picked by a recorded bench, like torch-compile.
AUTO_ORDER = ["tensorrt", "tensorrt:fp16", "onnxruntime", "openvino", "torch"]

__all__ = ["BACKENDS", "ALIASES", "Runner", "RunnerOptions", "RunnerOutput", "parse_backend", "backend_label",
           "runner_class", "usable_runner_class", "create_runner", "available_backends", "can_run",
           "choose_auto_backend", "spec_variant"]


def parse_backend(spec: str, precision: str | None = None) -> tuple[str, str | None]:
    """``"onnxruntime:int8"`` / ``"onnxruntime-int8"`` / ``"onnxruntime"`` -> (backend name, precision or None).

    An explicit ``precision`` argument wins over the one in the spec."""
    name, _, spec_precision = spec.partition(":")
    if name in ALIASES:
        name, alias_precision = ALIASES[name]
        spec_precision = spec_precision or alias_precision
    if name not in BACKENDS:
        known = ", ".join(["auto", *BACKENDS, *ALIASES])
        raise BackendUnavailableError(f"unknown backend {spec!r}; known: {known} (precision as name:precision)")
    return name, precision or spec_precision or None


def backend_label(name: str, precision: str | None) -> str:
    """The canonical spec for a backend at a precision (the default precision is left out)."""
    cls = runner_class(name)
    return name if precision in (None, cls.default_precision) else f"{name}:{precision}"


def runner_class(name: str) -> type[Runner]:
    name, _ = parse_backend(name)
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def can_run(bundle: Bundle, spec: str) -> bool:
    """Whether ``spec`` is installed here and ``bundle`` has the model file it runs."""
    name, precision = parse_backend(spec)
    cls = runner_class(name)
    try:
        return cls.is_available() and cls.supports(bundle, precision)
    except BackendUnavailableError:  # a precision this backend does not run
        return False


def available_backends(bundle: Bundle | None = None) -> list[str]:
    """Backend specs whose library is installed (and, given a bundle, whose model file it has).

    With a bundle, every precision the bundle holds a model for is listed (``onnxruntime:int8``)."""
    specs = []
    for name in BACKENDS:
        cls = runner_class(name)
        if not cls.is_available():
            continue
        if bundle is None:
            specs.append(name)
            continue
        for precision in cls.precisions:
            label = backend_label(name, precision)
            if cls.supports(bundle, precision) and label not in specs:
                specs.append(label)
    return specs


def usable_runner_class(bundle: Bundle, spec: str, precision: str | None = None) -> type[Runner]:
    """The runner class for ``spec``, after checking it is known, installed and has its model file in ``bundle``."""
    name, precision = parse_backend(spec, precision)
    cls = runner_class(name)
    if not cls.is_available():
        raise cls.not_installed_error()
    if not cls.supports(bundle, precision):
        raise BackendUnavailableError(f"backend {backend_label(name, precision)!r} cannot run bundle {bundle.root}: "
                                      f"{cls.unsupported_reason(bundle, precision)}")
    return cls


def create_runner(bundle: Bundle, backend: str = "auto", options: RunnerOptions | None = None) -> Runner:
    """A runner for ``bundle`` (not yet activated). ``auto`` picks the best available."""
    options = options or RunnerOptions()
    if backend == "auto":
        backend = choose_auto_backend(bundle)
    name, precision = parse_backend(backend, options.precision)
    cls = usable_runner_class(bundle, name, precision)
    return cls(bundle, replace(options, precision=precision))


def spec_variant(spec: str) -> str | None:
    """The bundle variant a backend spec runs (``onnxruntime:int8-static`` -> ``qdq``)."""
    name, precision = parse_backend(spec)
    try:
        return runner_class(name).variant_for(precision)
    except BackendUnavailableError:
        return None


def choose_auto_backend(bundle: Bundle) -> str:
    """The fastest backend a recorded ``clap-edge bench --record`` measured here, else AUTO_ORDER's first.

    Never a variant whose recorded top-1 agreement with fp32 (the manifest's ``drift``, else ``parity``)
    is below the int8 floor (99.5%), however fast it was; never an int8 variant measured slower than fp32
    on this CPU's int8 path (``bench_record.int8_speed_ok``)."""
    from clap_edge.runtime.bench_record import agreement_ok, int8_speed_ok, recorded_fastest_backend  # json only

    available = available_backends(bundle)
    candidates = [s for s in available + [a for a in ALIASES if can_run(bundle, a)]
                  if agreement_ok(bundle, spec_variant(s)) and int8_speed_ok(bundle, spec_variant(s))]
    fastest = recorded_fastest_backend(bundle, sorted(candidates))
    if fastest is not None:
        return fastest
    for name in AUTO_ORDER:
        if name in candidates:
            return name
    raise BackendUnavailableError(f"no backend can run bundle {bundle.root}; install onnxruntime")
