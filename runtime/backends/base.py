"""The one interface every backend implements (after Polygraphy's ``BaseRunner``).

A runner is built from a bundle, ``activate()``-d (load the model, create sessions),
fed preprocessed float32 batches ``[N, 3, H, W]`` by ``infer()``, and ``deactivate()``-d.
Backends return the model's one output, the embedding [N, d]; ``infer()`` applies the bundle's class
matrix (schema 4: classes are data) so every backend gives the same logits from the same embedding.
It is a context manager and keeps its own inference timings. Heavy libraries are
imported inside ``activate()``, never at module import.
"""

from __future__ import annotations

import importlib.util
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clap_edge.core.errors import BackendUnavailableError, BundleError
from clap_edge.export.bundle import Bundle, ClassMatrix
from clap_edge.runtime.huge_pages import wanted as huge_pages_wanted


@dataclass
class RunnerOutput:
    logits: np.ndarray  # [N, C] float32
    embedding: np.ndarray  # [N, d] float32


@dataclass
class RunnerOptions:
    threads: int | None = None  # intra-op threads; None lets the library decide
    device: str = "cpu"
    precision: str | None = None  # None: the backend's default (see Runner.precisions)
    extra: dict[str, Any] = field(default_factory=dict)
    # back a large model's weights with 2 MiB pages after loading (runtime/huge_pages.py); CLAP_EDGE_HUGE_PAGES=0: off
    huge_pages: bool = field(default_factory=huge_pages_wanted)


class Runner(ABC):
    """Base class of backend runners. Subclasses set ``name`` and implement the three hooks."""

    name: str = "base"
    #: the pip extra that installs this backend's library, for the "not installed" error
    pip_extra: str | None = None
    #: the top-level module ``activate()`` imports (None: nothing beyond numpy)
    library: str | None = None
    #: precision -> the bundle variant (``Bundle.variants`` key) whose model file runs at that precision
    precisions: dict[str, str | None] = {"fp32": "fp32"}
    #: the precision used when none is asked for
    default_precision: str = "fp32"

    def __init__(self, bundle: Bundle, options: RunnerOptions | None = None):
        self.bundle = bundle
        self.options = options or RunnerOptions()
        self.is_active = False
        self.inference_times: list[float] = []
        #: the precision asked for, and the bundle variant whose model file it runs
        self.requested_precision = self.options.precision or self.default_precision
        self.variant = self.variant_for(self.requested_precision)
        #: the numeric precision actually used (e.g. "fp32", "int8", "bf16"), set on activate
        self.precision: str = self.requested_precision
        #: what turns embeddings into logits (Classifier.set_classes replaces it)
        self.classes: ClassMatrix = ClassMatrix.from_bundle(bundle)
        #: activate()'s background move of a large model's weights to huge pages (None: not tried: off,
        #: not CPU, or a small model); wait_for_huge_pages() gives its report
        self._huge_pages: Any = None

    @classmethod
    def is_available(cls) -> bool:
        """Whether this backend's library can be imported here (cheap, no model load)."""
        if cls.library is None:
            return True
        try:
            return importlib.util.find_spec(cls.library) is not None
        except (ValueError, ImportError):  # blocked (sys.modules[lib] is None) or a broken parent package
            return False

    @classmethod
    def variant_for(cls, precision: str | None) -> str | None:
        """The bundle variant this backend runs at ``precision`` (None: its default)."""
        precision = precision or cls.default_precision
        if precision not in cls.precisions:
            raise BackendUnavailableError(f"backend {cls.name!r} has no precision {precision!r}; "
                                          f"it runs {', '.join(cls.precisions)}")
        return cls.precisions[precision]

    @classmethod
    def supports(cls, bundle: Bundle, precision: str | None = None) -> bool:
        """Whether ``bundle`` holds the model file this backend runs at ``precision``."""
        variant = cls.variant_for(precision)
        return variant is None or bundle.has_variant(variant)

    @classmethod
    def unsupported_reason(cls, bundle: Bundle, precision: str | None = None) -> str:
        """Why ``supports(bundle, precision)`` is False, for the error message."""
        return (f"it lacks the {cls.variant_for(precision)!r} model this backend runs at that precision "
                f"(it has: {', '.join(bundle.variants) or 'none'})")

    @classmethod
    def not_installed_error(cls) -> BackendUnavailableError:
        extra = f" Install it with: pip install 'clap-edge[{cls.pip_extra}]'" if cls.pip_extra else ""
        return BackendUnavailableError(f"backend {cls.name!r} is not installed here.{extra}")

    def activate(self) -> "Runner":
        if not self.is_active:
            before = self._regions_before_load()
            try:
                self.activate_impl()
            except ImportError as e:
                # is_available() can be stale (library removed or blocked since): name the extra, not a traceback
                if self.library and (e.name or "").split(".")[0] == self.library:
                    raise self.not_installed_error() from e
                raise
            self.is_active = True
            if before is not None:  # 2 MiB pages under what the library just loaded (runtime/huge_pages.py)
                from clap_edge.runtime.huge_pages import back_in_background

                self._huge_pages = back_in_background(skip=set(before))
        return self

    def wait_for_huge_pages(self) -> Any:
        """The :class:`~clap_edge.runtime.huge_pages.HugePages` report once the background move is done
        (None when none was started). Steady-state timings wait for it; answering never has to."""
        return self._huge_pages.result() if self._huge_pages is not None else None

    def _regions_before_load(self) -> list[tuple[int, int]] | None:
        """The process's large anonymous mappings now, if this runner will back a large model's weights
        with huge pages once loaded; None when it will not (off, not CPU, or the weights are small)."""
        from clap_edge.runtime import huge_pages

        if not self.options.huge_pages or self.options.device != "cpu" or self.variant not in self.bundle.variants:
            return None
        entry = self.bundle.manifest.files.get(self.bundle.variants[self.variant])
        if entry is None or not huge_pages.worth_it(int(entry.bytes)):
            return None
        return huge_pages.anonymous_regions()

    def infer(self, batch: np.ndarray) -> RunnerOutput:
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner is not active; call activate() or use it as a context manager")
        batch = self._check_batch(batch)
        start = time.perf_counter()
        embedding = np.asarray(self.infer_impl(batch), dtype=np.float32)
        self.inference_times.append(time.perf_counter() - start)
        if embedding.ndim != 2 or embedding.shape != (len(batch), self.classes.weights.shape[1]):
            raise BundleError(f"{self.bundle.label}: the {self.name} model gives embeddings of shape "
                              f"{list(embedding.shape)} for {len(batch)} images; the manifest implies "
                              f"[{len(batch)}, {self.classes.weights.shape[1]}]")
        return RunnerOutput(logits=self.classes.logits(embedding), embedding=embedding)

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        """The model's embedding output [N, d] for a checked float32 batch."""

    def deactivate_impl(self) -> None:
        pass

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        expected = self.bundle.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(f"input batch has shape {list(batch.shape)}, the bundle expects [N, {', '.join(map(str, expected))}]")
        return np.ascontiguousarray(batch, dtype=np.float32)
