"""BatchingClassifier: many callers, one model, batches formed on the fly.

Callers ``submit(image)`` from any thread and get a ``concurrent.futures.Future``. Two worker
threads do the work so decoding overlaps inference:

    submit() -> [request queue, bounded] -> decode worker -> [ready queue, 2 batches] -> inference worker

The decode worker collects requests until the batch is full or ``max_delay_ms`` has passed
since the first one arrived, decoding and preprocessing each as it comes; an image that
fails to decode fails its own future and is left out of the batch. The inference worker runs
the batch through :func:`predict_each` and resolves the futures.

The serving core, shared by this class, :meth:`Classifier.predict_files` and ``clap-edge serve``'s
replicas, is the two functions :func:`decode_one` and :func:`predict_each`: whatever goes wrong
with one image (it cannot be decoded, the model gives NaN / inf scores for it, or the model fails on
it alone) is that image's :class:`ImageError` naming it, and never fails its neighbours in a batch.
Only a model that fails on every image of a batch, one by one too, fails the batch. An error
becomes the record ``{"path": ..., "error": ...}`` (:func:`error_record`) wherever it is reported.

The classifier needs only two methods: ``preprocess(image) -> [3, H, W] float32`` and
``predict_batch(batch, top_k) -> list[Prediction]``; it is used from the workers only, one
call at a time, so it need not be thread-safe.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from clap_edge.core.errors import ImageError, first_line

__all__ = ["BatchingClassifier", "BatchingConfig", "QueueFullError", "decode_one", "predict_each", "image_label",
           "error_message", "error_record", "NON_FINITE"]

NON_FINITE = "the model gave non-finite scores (NaN or inf) for this image"

_STOP = object()  # sentinel that flows through both queues on close()


class QueueFullError(RuntimeError):
    """Raised by ``submit`` in non-blocking mode when ``max_queue`` requests are already waiting."""


class _ClassifierLike(Protocol):
    def preprocess(self, image: Any) -> np.ndarray: ...  # with label=... for bytes / file objects

    def predict_batch(self, batch: np.ndarray, top_k: int = 5) -> list: ...


@dataclass
class BatchingConfig:
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 1024
    block: bool = True  # back-pressure: block the caller when the queue is full, else raise QueueFullError
    top_k: int = 5


@dataclass
class _Request:
    image: Any
    future: Future


class BatchingClassifier:
    """Thread-safe batched front end to a :class:`~clap_edge.runtime.Classifier`.

    >>> with BatchingClassifier(clf, max_batch_size=32, max_delay_ms=5) as bc:   # doctest: +SKIP
    ...     futures = [bc.submit(path) for path in paths]
    ...     predictions = [f.result() for f in futures]
    """

    def __init__(self, classifier: _ClassifierLike, max_batch_size: int = 32, max_delay_ms: float = 5.0,
                 max_queue: int = 1024, block: bool = True, top_k: int = 5):
        if max_batch_size < 1 or max_queue < 1 or max_delay_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_delay_ms >= 0")
        self.classifier = classifier
        self.config = BatchingConfig(max_batch_size, max_delay_ms, max_queue, block, top_k)
        self._requests: queue.Queue = queue.Queue(maxsize=max_queue)
        self._ready: queue.Queue = queue.Queue(maxsize=2)  # decoded batches waiting for the model
        self._lock = threading.Lock()  # orders submit() against close(): nothing slips in after the stop
        self._closed = False
        self.batches_run = 0
        self.batch_sizes: list[int] = []
        self._decoder = threading.Thread(target=self._decode_loop, name="clap-edge-decode", daemon=True)
        self._inferer = threading.Thread(target=self._infer_loop, name="clap-edge-infer", daemon=True)
        self._decoder.start()
        self._inferer.start()

    # ---- public API ---------------------------------------------------------------

    def submit(self, image: Any) -> Future:
        """Queue one image (path, image bytes, binary file object, PIL image, uint8 array or preprocessed
        [3, H, W]); returns its Future.

        An empty array is refused here (ValueError); other bad images fail their own Future."""
        if isinstance(image, np.ndarray) and image.size == 0:
            raise ValueError(f"empty image array (shape {list(image.shape)})")
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("BatchingClassifier is closed")
            try:
                self._requests.put(_Request(image, future), block=self.config.block)
            except queue.Full:
                raise QueueFullError(
                    f"{self.config.max_queue} requests are already queued; retry later or use block=True"
                ) from None
        return future

    def close(self) -> None:
        """Stop accepting requests, finish every queued one, and stop the workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._requests.put(_STOP)  # blocks while full; the decoder keeps draining
        self._decoder.join()
        self._inferer.join()

    def __enter__(self) -> "BatchingClassifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def pending(self) -> int:
        return self._requests.qsize()

    # ---- decode worker --------------------------------------------------------------

    def _decode_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._requests.get()
            if first is _STOP:
                break
            batch, stopping = self._collect(first)
            if batch.requests:
                self._ready.put((np.stack(batch), batch.requests))
        self._ready.put(_STOP)

    def _collect(self, first: _Request) -> tuple["_Batch", bool]:
        batch = _Batch()
        self._decode_into(batch, first)
        deadline = time.perf_counter() + self.config.max_delay_ms / 1000.0
        while len(batch) < self.config.max_batch_size:
            timeout = deadline - time.perf_counter()
            try:
                item = self._requests.get(timeout=timeout) if timeout > 0 else self._requests.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            self._decode_into(batch, item)
        return batch, False

    def _decode_into(self, batch: "_Batch", request: _Request) -> None:
        if not request.future.set_running_or_notify_cancel():
            return  # cancelled by the caller while queued
        try:
            array = decode_one(self.classifier, request.image, image_label(request.image))
        except BaseException as e:  # a broken image fails its own request only
            request.future.set_exception(e)
            return
        batch.add(array, request)

    # ---- inference worker -------------------------------------------------------------

    def _infer_loop(self) -> None:
        while True:
            item = self._ready.get()
            if item is _STOP:
                return
            array, requests = item
            self.batches_run += 1
            self.batch_sizes.append(len(requests))
            try:
                outcomes = predict_each(self.classifier, array, self.config.top_k,
                                        [image_label(r.image) for r in requests])
            except BaseException as e:  # the model fails on every image: each request gets that error
                for request in requests:
                    request.future.set_exception(e)
                continue
            for request, outcome in zip(requests, outcomes):
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(_with_path(outcome, request.image))


class _Batch(list):
    """Preprocessed arrays of one batch, with the requests they belong to."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[_Request] = []

    def add(self, array: np.ndarray, request: _Request) -> None:
        self.append(array)
        self.requests.append(request)


def _with_path(prediction: Any, image: Any) -> Any:
    # predict() on a path records it; predict_batch() cannot know it, so put it back here.
    if isinstance(image, (str, os.PathLike)) and dataclasses.is_dataclass(prediction) and hasattr(prediction, "path"):
        return dataclasses.replace(prediction, path=str(image))
    return prediction


# ---- the serving core: one decode and one batch policy for every front end ---------------------


def image_label(image: Any) -> str | None:
    """What an image's errors name: its path, or nothing for in-memory images."""
    return str(image) if isinstance(image, (str, os.PathLike)) else None


def _named(label: str | None, problem: str) -> str:
    return f"{label}: {problem}" if label else problem


def decode_one(classifier: _ClassifierLike, image: Any, label: str | None = None) -> np.ndarray:
    """``classifier.preprocess(image)`` (a path, image bytes, a binary file object, a PIL image or an
    array); any failure is this image's :class:`ImageError` naming ``label``."""
    try:
        if isinstance(image, (bytes, bytearray, memoryview)) or hasattr(image, "read"):
            return classifier.preprocess(image, label=label)  # errors name the label, not "image bytes"
        return classifier.preprocess(image)
    except ImageError:
        raise
    except Exception as e:  # an unexpected decoder failure is still this image's problem only
        raise ImageError(_named(label, f"cannot decode image: {first_line(e)}")) from e


def predict_each(classifier: _ClassifierLike, batch: np.ndarray, top_k: int, labels: list[str | None]) -> list[Any]:
    """One model call for ``batch``; each image's outcome is its prediction or its own :class:`ImageError`.

    NaN / inf scores are that image's error (never printed, never a 500). If the call raises, every
    image is retried alone, so only the one that breaks the model fails; when each fails alone too,
    the model (not an image) is broken and the batch's error is raised."""
    try:
        predictions = classifier.predict_batch(batch, top_k=top_k)
        if len(predictions) != len(batch):  # a zip would leave some images without an answer
            raise RuntimeError(f"predict_batch gave {len(predictions)} predictions for {len(batch)} images")
    except Exception as error:
        if len(batch) == 1:
            raise
        alone = [_predict_alone(classifier, batch[i:i + 1], top_k) for i in range(len(batch))]
        if all(isinstance(a, Exception) for a in alone):
            raise error
        predictions = alone
    return [_outcome(p, label) for p, label in zip(predictions, labels)]


def _predict_alone(classifier: _ClassifierLike, one: np.ndarray, top_k: int) -> Any:
    try:
        return classifier.predict_batch(one, top_k=top_k)[0]
    except Exception as e:
        return e


def _outcome(prediction: Any, label: str | None) -> Any:
    if isinstance(prediction, Exception):
        error = ImageError(_named(label, f"the model failed on this image ({first_line(prediction)})"))
        error.__cause__ = prediction
        return error
    is_finite = getattr(prediction, "is_finite", None)
    if is_finite is not None and not is_finite():
        return ImageError(_named(label, NON_FINITE))
    return prediction


def error_message(error: BaseException, label: str | None) -> str:
    """The error without the leading ``label: `` (a record names the image in its own field)."""
    message = str(error)
    return message[len(label) + 2:] if label and message.startswith(f"{label}: ") else message


def error_record(label: str | None, error: BaseException) -> dict[str, Any]:
    """``{"path": label, "error": message}``: a failed image, as ``classify --json``, Ray Data rows and
    ``serve``'s error bodies report it."""
    return {"path": label, "error": error_message(error, label)}
