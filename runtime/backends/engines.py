"""What the engine backends (``tensorrt``, ``aoti``) share: picking the bundle's engine that fits this
machine, and running batches of any size through an engine built for a batch range [min, max].

Torch-free; each backend adds its library in ``activate()``.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle.engines import (ENGINE_KINDS, DeviceInfo, EngineChoice, engine_entries, host_cpu,
                                              load_sidecar, select_engine, usable_reason, visible_gpus)
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.backends.base import Runner

__all__ = ["EngineRunner", "plan_chunks", "run_in_chunks"]


def plan_chunks(n: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Split a batch of ``n`` into runs an engine with batch range [lo, hi] accepts.

    Returns (start, stop, run_size): rows [start, stop) of the batch, run as a batch of ``run_size``
    (> stop - start when a short tail is padded up to ``lo``)."""
    if n < 1 or not 1 <= lo <= hi:
        raise ValueError(f"cannot plan a batch of {n} for an engine profile [{lo}, {hi}]")
    chunks = []
    for start in range(0, n, hi):
        stop = min(start + hi, n)
        chunks.append((start, stop, max(stop - start, lo)))
    return chunks


def run_in_chunks(batch: np.ndarray, lo: int, hi: int, run: Any) -> np.ndarray:
    """``run(x) -> embedding`` over ``batch`` in engine-sized chunks (padding short tails)."""
    embedding = []
    for start, stop, size in plan_chunks(len(batch), lo, hi):
        x = batch[start:stop]
        if size > len(x):
            x = np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), dtype=x.dtype)])
        out_embedding = run(x)
        embedding.append(np.asarray(out_embedding[: stop - start], dtype=np.float32))
    return np.concatenate(embedding)


class EngineRunner(Runner):
    """A runner for a compiled engine in the bundle's ``engines/``: precision selects the engine, not a variant.

    ``options.extra["engine_choice"]`` (an :class:`EngineChoice`) runs a given engine instead of selecting one;
    the builder uses it to check a freshly built engine's parity before storing it."""

    engine_kind: str = ""

    def __init__(self, bundle: Bundle, options=None):
        super().__init__(bundle, options)
        self.choice: EngineChoice | None = None

    @classmethod
    def library_version(cls) -> str | None:
        try:
            return importlib.metadata.version(ENGINE_KINDS[cls.engine_kind][0])
        except importlib.metadata.PackageNotFoundError:
            return None

    @classmethod
    def candidate_hosts(cls) -> list[DeviceInfo]:
        """Devices here, found cheaply (no GPU library import): the CPU and the GPUs nvidia-smi lists."""
        return [host_cpu(), *visible_gpus()]

    @classmethod
    def supports(cls, bundle: Bundle, precision: str | None = None) -> bool:
        """Whether the bundle holds an engine at ``precision`` built for a device and library version here."""
        precision = precision or cls.default_precision
        cls.variant_for(precision)  # an unknown precision is an error, as for other backends
        hosts, version = cls.candidate_hosts(), cls.library_version()
        for entry in engine_entries(bundle, cls.engine_kind, precision):
            try:
                sidecar = load_sidecar(bundle, entry)
            except BundleError:
                continue  # tampered or malformed: selection will say so if this backend is asked for
            if usable_reason(bundle, sidecar, hosts, version) is None:
                return True
        return False

    @classmethod
    def unsupported_reason(cls, bundle: Bundle, precision: str | None = None) -> str:
        try:
            select_engine(bundle, cls.engine_kind, precision or cls.default_precision, cls.candidate_hosts(),
                          cls.library_version())
        except BundleError as e:
            return str(e).removeprefix(f"{bundle.label}: ")
        return "its engine fits this machine only for another device option"

    def select(self, hosts: list[DeviceInfo], library_version: str) -> EngineChoice:
        """The engine to run: the injected one, else the bundle's engine that fits ``hosts``."""
        injected = self.options.extra.get("engine_choice")
        choice = injected or select_engine(self.bundle, self.engine_kind, self.requested_precision, hosts,
                                           library_version)
        self.choice = choice
        self.precision = choice.sidecar.precision
        return choice

    @property
    def batch_range(self) -> tuple[int, int]:
        assert self.choice is not None
        lo, _, hi = self.choice.sidecar.batch
        return lo, hi
