"""Classifier: a verified bundle + a backend runner + open_clip-exact preprocessing.

>>> with Classifier.open("bundle", backend="auto") as clf:          # doctest: +SKIP
...     for p in clf.predict(["cat.jpg", "dog.png"], top_k=3):
...         print(p.labels, p.scores)

Only numpy, PIL and the chosen backend's library are imported: an ONNX bundle runs
where neither torch nor open_clip is installed. :meth:`Classifier.predict_files` is the
pipelined path from files (decode the next batch in threads while the current one runs)
that ``clap-edge classify`` and the benchmarks use.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from clap_edge.core.errors import BundleError, ImageError
from clap_edge.export.bundle import Bundle, ClassMatrix
from clap_edge.export.bundle.classes import checked_class_tensors
from clap_edge.runtime.backends import RunnerOptions, create_runner
from clap_edge.runtime.backends.base import Runner, RunnerOutput
from clap_edge.runtime.batching import decode_one, predict_each
from clap_edge.core.images import load_image, source_label
from clap_edge.core.preprocess import Preprocessor

# JPEGs are decoded at a DCT scale that keeps at least this many times the model input size.
DRAFT_OVERSAMPLE = 2

__all__ = ["Classifier", "Prediction", "softmax"]


@dataclass
class Prediction:
    """The top-k classes of one image, best first. ``scores`` are softmax probabilities over all classes."""

    labels: list[str]
    scores: list[float]
    embedding: np.ndarray = field(repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)
    path: str | None = None

    @property
    def label(self) -> str:
        return self.labels[0]

    def is_finite(self) -> bool:
        """False if the model gave NaN or inf for this image (its scores mean nothing)."""
        logits = self.logits if self.logits is not None else np.asarray(self.scores)
        return bool(np.isfinite(logits).all() and np.isfinite(self.scores).all())

    def to_dict(self) -> dict[str, Any]:
        """The ``classify --json`` record (without embedding / logits)."""
        return {"path": self.path, "labels": list(self.labels), "scores": [float(s) for s in self.scores]}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: max subtracted), returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class Classifier:
    """Classify images with a bundle. Open with :meth:`open`; a context manager (``close()`` at exit)."""

    def __init__(self, bundle: Bundle, runner: Runner):
        self.bundle = bundle
        self.runner = runner
        self.class_names = bundle.class_names
        # Bundle.open checked the preprocess block and that its size matches the model input.
        self.preprocess_config = bundle.preprocess
        self.preprocessor = Preprocessor(self.preprocess_config)
        h, w = self.preprocess_config.size
        self.draft_size = (DRAFT_OVERSAMPLE * max(h, w),) * 2

    # ---- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, bundle: str | os.PathLike | Bundle, backend: str = "auto", threads: int | None = None,
             device: str = "cpu", trusted_keys: Sequence[str | os.PathLike] | None = None) -> "Classifier":
        """Open and verify ``bundle`` (dir or .tar), load ``backend``'s model, and check its output shapes.

        ``trusted_keys``: public key PEMs; the bundle must then be signed by one of them (every file)."""
        if not isinstance(bundle, Bundle):
            # manifest digest and every field, (signature), class embeddings [C, d]
            bundle = Bundle.open(bundle, trusted_keys=trusted_keys)
        elif trusted_keys and bundle.signature is None:
            raise BundleError(f"{bundle.label}: opened without trusted keys; open it with Bundle.open(..., "
                              "trusted_keys=...) or pass its path")
        try:
            runner = create_runner(bundle, backend, RunnerOptions(threads=threads, device=device))
            runner.activate()  # loads the model file after checking its sha256
            try:
                clf = cls(bundle, runner)
                clf._check_outputs()
            except BaseException:
                runner.deactivate()
                raise
        except BundleError as e:
            raise _relabel(e, bundle) from None
        return clf

    def _check_outputs(self) -> None:
        """One tiny inference: the model must give [n, C] logits and [n, d] embeddings, as the manifest says."""
        out = self.runner.infer(np.zeros((1, *self.bundle.input_shape), dtype=np.float32))
        c, d = len(self.class_names), self.bundle.embed_dim
        for name, arr, want in (("logits", out.logits, (1, c)), ("embedding", out.embedding, (1, d))):
            if tuple(arr.shape) != want:
                raise BundleError(f"{self.bundle.label}: the {self.runner.name} model gives {name} of shape "
                                  f"{list(arr.shape)} for one image; the manifest implies {list(want)}")
        self.runner.inference_times.clear()  # the probe is not a measurement

    # ---- classes (schema 4: data the runtime applies) --------------------------------

    def set_class_matrix(self, class_names: Sequence[str], class_matrix: np.ndarray,
                         bias: np.ndarray | None = None) -> None:
        """Use these classes from now on, in memory (the bundle is not changed): W [C, d], optional b [C]."""
        names = list(class_names)
        weights, bias = checked_class_tensors(names, class_matrix, bias, self.bundle.embed_dim)
        self.runner.classes = ClassMatrix(weights, bias, self.runner.classes.scale)
        self.class_names = names

    def set_classes(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """Zero-shot classes from words, in memory: the bundle's text encoder (``export --text-encoder``)
        embeds each name with the bundle's templates (or ``templates``). Torch-free."""
        from clap_edge.runtime.text import TextEncoder

        with TextEncoder.open(self.bundle, threads=self.runner.options.threads) as encoder:
            matrix = encoder.class_embeddings(list(class_names), templates)
        self.set_class_matrix(class_names, matrix)

    def close(self) -> None:
        self.runner.deactivate()
        self.bundle.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- preprocessing ------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.bundle.input_shape

    def load(self, path: str | os.PathLike | bytes | BinaryIO, label: str | None = None) -> Image.Image:
        """Decode an image file, its bytes or an open binary file for this model (large JPEGs are decoded at
        a reduced DCT scale); errors about bytes or a file object name ``label``."""
        return load_image(path, draft_size=self.draft_size, label=label)

    def preprocess(self, image: str | os.PathLike | bytes | BinaryIO | Image.Image | np.ndarray,
                   label: str | None = None) -> np.ndarray:
        """A path, image bytes, binary file object, PIL image or uint8 HxWx3 array -> float32 [3, H, W], as
        open_clip's eval transform. A float array already preprocessed ([3, H, W] of the model's size,
        finite) is passed through."""
        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(image, "read"):
            where, image = source_label(image, label), self.load(image, label)
            try:
                return self.preprocessor(image)
            except ImageError as e:  # a bound in core/preprocess.py does not know the file
                raise ImageError(f"{where}: {e}") from e
        elif isinstance(image, np.ndarray):
            if image.size == 0:
                raise ValueError(f"empty image array (shape {list(image.shape)})")
            if image.dtype != np.uint8:
                return self._checked_float(image)
        return self.preprocessor(image)

    def _checked_float(self, array: np.ndarray) -> np.ndarray:
        if not np.issubdtype(array.dtype, np.floating) or tuple(array.shape) != self.input_shape:
            raise ValueError(f"a float image array must be preprocessed, of shape {list(self.input_shape)} "
                             f"(got {array.dtype} {list(array.shape)}); pass uint8 [H, W, 3] to have it preprocessed")
        if not np.isfinite(array).all():
            raise ValueError("preprocessed image array holds NaN or infinite values")
        return np.ascontiguousarray(array, dtype=np.float32)

    # ---- prediction ---------------------------------------------------------------

    def predict_batch(self, batch: np.ndarray, top_k: int = 5, paths: Sequence[str | None] | None = None
                      ) -> list[Prediction]:
        """Predictions for a preprocessed float32 batch [N, 3, H, W]."""
        out = self.runner.infer(batch)
        return self._predictions(out, top_k, paths)

    def predict(self, images: Any, top_k: int = 5, batch_size: int = 32) -> list[Prediction]:
        """Predictions for paths, PIL images, uint8 arrays (a list, or one of them) or a float batch.

        A broken image file raises :class:`ImageError`; use :meth:`predict_files` to report and go on.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype != np.uint8:
            return self.predict_batch(images, top_k)
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = np.stack([self.preprocess(im) for im in chunk])
            paths = [str(im) if isinstance(im, (str, os.PathLike)) else None for im in chunk]
            results.extend(self.predict_batch(batch, top_k, paths))
        return results

    def predict_files(self, paths: Iterable[str | os.PathLike], batch_size: int = 32, workers: int = 2,
                      top_k: int = 5, prefetch_batches: int = 2
                      ) -> Iterator[tuple[str, Prediction | ImageError]]:
        """Classify files in input order, yielding ``(path, Prediction)`` or ``(path, ImageError)``.

        ``workers`` threads decode and preprocess up to ``prefetch_batches`` batches ahead while the
        backend runs the current one (PIL and the backends release the GIL), so throughput from files
        approaches the model-only figure. A broken file is yielded as its error; the rest go on.
        """
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be >= 1")
        path_iter = iter(paths)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clap-edge-decode") as pool:
            pending: deque[tuple[str, Future]] = deque()

            def fill() -> None:
                while len(pending) < batch_size * (1 + prefetch_batches):
                    p = next(path_iter, None)
                    if p is None:
                        return
                    pending.append((str(p), pool.submit(decode_one, self, p, str(p))))

            fill()
            try:
                while pending:
                    chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                    fill()  # queue the next batches' decoding before this one blocks on the model
                    yield from self._run_chunk(chunk, top_k)
            finally:  # a caller that stops early should not wait for decoding it will never use
                for _, fut in pending:
                    fut.cancel()

    def _run_chunk(self, chunk: list[tuple[str, Future]], top_k: int) -> Iterator[tuple[str, Prediction | ImageError]]:
        """The serving core's policy (runtime.batching): each file's decode error, NaN scores or model failure
        is its own error; the rest of the chunk is classified."""
        outcomes: dict[int, Prediction | ImageError] = {}
        for i, (_, fut) in enumerate(chunk):
            try:
                outcomes[i] = fut.result()
            except ImageError as e:
                outcomes[i] = e
        order = [i for i, o in outcomes.items() if isinstance(o, np.ndarray)]
        if order:
            labels = [chunk[i][0] for i in order]
            batch = np.stack([outcomes[i] for i in order])
            for i, label, outcome in zip(order, labels, predict_each(self, batch, top_k, labels)):
                if isinstance(outcome, Prediction):
                    outcome.path = label
                outcomes[i] = outcome
        for i, (path, _) in enumerate(chunk):
            yield path, outcomes[i]

    def _predictions(self, out: RunnerOutput, top_k: int, paths: Sequence[str | None] | None) -> list[Prediction]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, len(self.class_names))
        probs = softmax(out.logits)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        paths = paths if paths is not None else [None] * len(probs)
        return [
            Prediction(labels=[self.class_names[j] for j in idx], scores=[float(probs[n, j]) for j in idx],
                       embedding=out.embedding[n], logits=out.logits[n], path=paths[n])
            for n, idx in enumerate(order)
        ]


def _relabel(error: BundleError, bundle: Bundle) -> BundleError:
    """Backends name ``bundle.root``; for a .tar that is a temp folder: name the .tar instead."""
    if str(bundle.root) == bundle.label:
        return error
    return BundleError(str(error).replace(str(bundle.root), bundle.label))
