"""Backend registry: name -> runner class, imported lazily so no backend library loads until used."""

from __future__ import annotations

import importlib

from clap_edge.errors import BackendUnavailableError
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.backends.base import Runner, RunnerOptions, RunnerOutput

# name -> (module, class). Each module imports its library inside the runner, not at import.
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("clap_edge.runtime.backends.onnxruntime", "OnnxRuntimeRunner"),
    "onnxruntime-int8": ("clap_edge.runtime.backends.onnxruntime", "OnnxRuntimeInt8Runner"),
    "torch": ("clap_edge.runtime.backends.torch", "TorchRunner"),
    "torch-compile": ("clap_edge.runtime.backends.torch_compile", "TorchCompileRunner"),
    "openvino": ("clap_edge.runtime.backends.openvino", "OpenVINORunner"),
}

# Preference when no bench result says otherwise: fastest-first on typical hardware.
# torch-compile is never picked statically (minutes of compile on first use); int8 changes results.
AUTO_ORDER = ["onnxruntime", "openvino", "torch"]

__all__ = ["BACKENDS", "Runner", "RunnerOptions", "RunnerOutput", "runner_class", "usable_runner_class",
           "create_runner", "available_backends", "choose_auto_backend"]


def runner_class(name: str) -> type[Runner]:
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def available_backends(bundle: Bundle | None = None) -> list[str]:
    """Backends whose library is installed (and, given a bundle, whose model file it has)."""
    names = []
    for name in BACKENDS:
        cls = runner_class(name)
        if cls.is_available() and (bundle is None or cls.supports(bundle)):
            names.append(name)
    return names


def usable_runner_class(bundle: Bundle, name: str) -> type[Runner]:
    """The runner class for ``name``, after checking it is known, installed and has its model file in ``bundle``."""
    cls = runner_class(name)
    if not cls.is_available():
        raise cls.not_installed_error()
    if not cls.supports(bundle):
        raise BackendUnavailableError(f"backend {name!r} cannot run bundle {bundle.root}: "
                                      f"it lacks the model file this backend needs")
    return cls


def create_runner(bundle: Bundle, backend: str = "auto", options: RunnerOptions | None = None) -> Runner:
    """A runner for ``bundle`` (not yet activated). ``auto`` picks the best available."""
    if backend == "auto":
        backend = choose_auto_backend(bundle)
    return usable_runner_class(bundle, backend)(bundle, options)


def choose_auto_backend(bundle: Bundle) -> str:
    """The fastest backend a recorded ``clap-edge bench --record`` measured here, else AUTO_ORDER's first."""
    available = set(available_backends(bundle))
    from clap_edge.runtime.bench import recorded_fastest_backend  # light: numpy + json only

    fastest = recorded_fastest_backend(bundle, sorted(available))
    if fastest is not None:
        return fastest
    for name in AUTO_ORDER:
        if name in available:
            return name
    raise BackendUnavailableError(f"no backend can run bundle {bundle.root}; install onnxruntime")
