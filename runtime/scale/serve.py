"""``clap-edge serve``: a bundle behind HTTP on Ray Serve, with dynamic batching.

Each replica opens the bundle once (:meth:`Classifier.open` in the deployment's ``__init__``),
decodes request bodies in threads with the same decoder as ``classify`` and feeds
``Classifier.predict_batch`` through ``@serve.batch``, so concurrent requests share a model call.
Replicas spread over a Ray cluster when ``address`` names one; otherwise a local cluster is
started with a bounded CPU count.

HTTP contract (also in the README):

    POST /v1/classify?top_k=K[&embedding=1]   body: the image file's bytes
         200 {"labels": [...], "scores": [...], ["embedding": [...]]}   (a ``classify --json`` line)
         422 {"error": "..."}    the body is not an image the decoder can read
         400 {"error": "..."}    a bad query parameter
         413 {"error": "..."}    a body over ``max_body_mb``
    GET  /v1/health             200 {"status": "ok", ...} once the bundle is loaded

SIGINT / SIGTERM: Serve shuts down gracefully (replicas finish the requests they accepted) and
the local Ray cluster stops. Ray Serve's Prometheus metrics are served on ``metrics_port``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from clap_edge.core.errors import ClapEdgeError, ImageError
from clap_edge.runtime.scale.cluster import check_bundle, connect, import_ray
from clap_edge.runtime.scale.decode import decode_bytes, error_message

__all__ = ["ServeConfig", "serve", "build_app", "start", "stop", "check_bundle", "APP_NAME", "TRUE_WORDS"]

APP_NAME = "clap-edge"
TRUE_WORDS = ("1", "true", "yes", "on")
REQUEST_LABEL = "request body"


@dataclass
class ServeConfig:
    bundle: str
    backend: str = "auto"
    threads: int | None = None          # backend intra-op threads per replica
    trusted_keys: tuple[str, ...] = ()  # public keys; when given, the bundle must be signed by one of them
    replicas: int = 1
    replica_cpus: float = 1.0           # Ray CPUs reserved per replica
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_ongoing_requests: int = 256     # per replica; must exceed max_batch_size or batches stay small
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None          # a Ray cluster (ray://... or host:port); None = start a local one
    num_cpus: int | None = None         # local cluster size (default: enough for the replicas, >= 2)
    object_store_mb: int = 256          # local cluster object store (requests are small)
    metrics_port: int | None = None     # Prometheus endpoint of the local node (Ray Serve metrics)
    graceful_shutdown_s: float = 20.0   # how long a stopping replica waits for accepted requests
    access_log: bool = False            # one log line per request (costly at thousands of requests/s)
    max_body_mb: float = 64.0           # larger request bodies answer 413 without being read whole

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_batch_size < 1 or self.batch_wait_ms < 0:
            raise ClapEdgeError("replicas and max_batch_size must be >= 1, batch_wait_ms >= 0")
        self.max_ongoing_requests = max(self.max_ongoing_requests, 2 * self.max_batch_size)


def _deployment_class():
    """The Serve deployment, built on first use so that importing this module does not import Ray."""
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(name="ClapEdgeClassifier")
    class ClassifierDeployment:
        def __init__(self, bundle: str, backend: str, threads: int | None, max_batch_size: int,
                     batch_wait_s: float, max_body_bytes: int, trusted_keys: tuple[str, ...] = ()):
            from clap_edge.runtime.classifier import Classifier

            self.classifier = Classifier.open(bundle, backend=backend, threads=threads,  # one load per replica
                                              trusted_keys=list(trusted_keys) or None)
            self.n_classes = len(self.classifier.class_names)
            self.info = {"bundle": os.path.basename(os.path.normpath(bundle)),
                         "backend": self.classifier.runner.name, "classes": self.n_classes}
            self.max_body_bytes = max_body_bytes
            self.max_batch_size = max_batch_size
            self.predict.set_max_batch_size(max_batch_size)
            self.predict.set_batch_wait_timeout_s(batch_wait_s)
            self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
            self.model_task: asyncio.Task | None = None
            from ray.serve.metrics import Histogram  # on the Prometheus port beside Serve's own metrics

            self.model_batch_sizes = Histogram("clap_edge_model_batch_size", description="images per model call",
                                               boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256])

        # Serve forms a batch every batch_wait_s even while the model is busy (its max_concurrent_batches
        # semaphore is taken after the batch is formed), so with one model call at a time the batches it
        # hands over are tiny (mean 1.4 images measured with 8 clients on ViT-B-32, against 8 in-process).
        # So its batches are let through at once and merged here: the next model call takes everything
        # that arrived while the last one ran, up to max_batch_size.
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=1024)
        async def predict(self, arrays: list[np.ndarray]) -> list[Any]:
            loop = asyncio.get_running_loop()
            futures = [loop.create_future() for _ in arrays]
            self.pending.extend(zip(arrays, futures))
            if self.model_task is None or self.model_task.done():
                self.model_task = asyncio.ensure_future(self._run_model())
            return list(await asyncio.gather(*futures))

        async def _run_model(self) -> None:
            while self.pending:
                chunk = self.pending[: self.max_batch_size]
                del self.pending[: self.max_batch_size]
                batch = np.stack([array for array, _ in chunk])
                self.model_batch_sizes.observe(len(chunk))
                try:
                    # Full class order per image; each request keeps its own top_k (a prefix of that order).
                    predictions = await asyncio.to_thread(self.classifier.predict_batch, batch, self.n_classes)
                except Exception as e:
                    for _, future in chunk:
                        future.set_exception(e)
                    continue
                for (_, future), prediction in zip(chunk, predictions):
                    future.set_result(prediction)

        async def __call__(self, request) -> JSONResponse:
            path = request.url.path.rstrip("/")
            if path.endswith("/v1/health"):
                return JSONResponse({"status": "ok", **self.info})
            if not path.endswith("/v1/classify"):
                return JSONResponse({"error": f"no route {request.url.path}; use POST /v1/classify"}, 404)
            if request.method != "POST":
                return JSONResponse({"error": "POST the image bytes to /v1/classify"}, 405)
            try:
                top_k, with_embedding = _parse_query(request.query_params)
            except ValueError as e:
                return JSONResponse({"error": str(e)}, 400)
            body = await _read_body(request, self.max_body_bytes)
            if body is None:
                return JSONResponse({"error": f"request body over {self.max_body_bytes} bytes"}, 413)
            try:
                array = await asyncio.to_thread(decode_bytes, self.classifier, body, REQUEST_LABEL)
            except ImageError as e:
                return JSONResponse({"error": error_message(e, REQUEST_LABEL)}, 422)
            prediction = await self.predict(array)
            return JSONResponse(prediction_record(prediction, top_k, with_embedding))

    return ClassifierDeployment


async def _read_body(request, limit: int) -> bytes | None:
    """The body, or None once it is known to exceed ``limit`` (from Content-Length, or while streaming it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        return None if int(declared) > limit else await request.body()
    chunks, size = [], 0  # chunked upload: count while reading
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_query(params) -> tuple[int, bool]:
    raw = params.get("top_k", "5")
    try:
        top_k = int(raw)
    except ValueError:
        raise ValueError(f"top_k must be an integer, got {raw!r}") from None
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return top_k, params.get("embedding", "0").lower() in TRUE_WORDS


def prediction_record(prediction: Any, top_k: int, with_embedding: bool) -> dict[str, Any]:
    """The response body: a ``classify --json`` record's fields, cut to ``top_k``."""
    record: dict[str, Any] = {"labels": list(prediction.labels[:top_k]),
                              "scores": [float(s) for s in prediction.scores[:top_k]]}
    if with_embedding:
        record["embedding"] = [float(v) for v in np.asarray(prediction.embedding, dtype=np.float32)]
    return record


def build_app(config: ServeConfig):
    """The Serve application for ``config`` (bind it with ``serve.run`` yourself, or use :func:`serve`)."""
    deployment = _deployment_class().options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        graceful_shutdown_timeout_s=config.graceful_shutdown_s,
        graceful_shutdown_wait_loop_s=0.5,
        ray_actor_options={"num_cpus": config.replica_cpus},
    )
    return deployment.bind(os.path.abspath(config.bundle), config.backend, config.threads, config.max_batch_size,
                           config.batch_wait_ms / 1000.0, int(config.max_body_mb * (1 << 20)),
                           tuple(os.path.abspath(k) for k in config.trusted_keys))


def start(config: ServeConfig) -> None:
    """Connect to (or start) Ray, start Serve's HTTP proxy and deploy; returns once replicas are ready."""
    check_bundle(config.bundle, config.backend, config.trusted_keys)
    import_ray("serving")
    try:
        from ray import serve as ray_serve
    except ImportError as e:
        raise ClapEdgeError(f"serving needs Ray Serve: pip install 'clap-edge[serve]' ({e})") from None

    cpus = config.num_cpus or max(2, int(np.ceil(config.replicas * config.replica_cpus)))
    connect(config.address, cpus, config.object_store_mb, config.metrics_port)
    ray_serve.start(http_options={"host": config.host, "port": config.port})
    ray_serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False,
                  logging_config={"enable_access_log": config.access_log})


def stop() -> None:
    """Graceful: Serve lets replicas finish accepted requests before it stops them, then Ray disconnects."""
    import ray

    if ray.is_initialized():
        from ray import serve as ray_serve

        # Delete the application first, with the HTTP proxy still up: Serve stops routing to its replicas
        # (later requests answer 404 / 503 instead of being dropped) and each replica finishes the
        # requests it holds (graceful_shutdown_s) whose answers still flow back through the proxy. Only
        # then do the proxy and controller go (serve.shutdown alone stops them together and drops those).
        try:
            ray_serve.delete(APP_NAME, _blocking=True)
        finally:
            ray_serve.shutdown()
            ray.shutdown()


def serve(config: ServeConfig, on_ready: Callable[[ServeConfig], None] | None = None,
          stop_event: threading.Event | None = None) -> None:
    """Run until SIGINT / SIGTERM (or ``stop_event``), then shut down gracefully."""
    stop_event = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop_event.set())
    started = False
    try:
        start(config)
        started = True
        if on_ready is not None:
            on_ready(config)
        while not stop_event.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():  # a second Ctrl-C during shutdown interrupts as usual
            signal.signal(sig, handler)
        if started or "ray" in sys.modules:
            stop()
