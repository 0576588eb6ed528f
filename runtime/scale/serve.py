"""``clap-edge serve``: a bundle behind HTTP on Ray Serve, with dynamic batching.

The driver checks a private snapshot of the bundle (signature with ``trusted_keys``, every digest,
the backend loads it) and pins it; each replica opens its own private copy of that snapshot and
checks it again (the signature against the key bytes it was handed, the manifest sha256 the driver
pinned), so a bundle swapped after the check is never what a replica serves. A replica decodes
request bodies in threads with the same decoder as ``classify`` (from the bytes, no temporary file)
and feeds the serving core (:func:`clap_edge.runtime.batching.predict_each`) through
``@serve.batch``, so concurrent requests share a model call and each image gets its own answer:
NaN scores or an undecodable body are that request's 422, never its neighbours'. Replicas spread
over a Ray cluster when ``address`` names one; otherwise a local cluster is started with a bounded
CPU count.

HTTP contract (also in the README):

    POST /v1/classify?top_k=K[&embedding=1]   body: the image file's bytes
         200 {"labels": [...], "scores": [...], ["embedding": [...]]}   (a ``classify --json`` line)
         422 {"error": "..."}    this image failed: the body is not an image the decoder can read, or the
                                 model gave NaN / inf scores for it (``classify --json``'s error record)
         500 {"error": "..."}    the model failed on every image of the batch (not this image's fault)
         400 {"error": "..."}    a bad query parameter (top_k not an integer >= 1; a top_k above the class
                                 count is not an error: every class is returned, as ``classify --top-k`` does)
         413 {"error": "..."}    a body over ``max_body_mb``
    GET  /v1/health             200 {"status": "ok", ...} once the bundle is loaded

SIGINT / SIGTERM: Serve shuts down gracefully (replicas finish the requests they accepted), the
local Ray cluster stops and the process exits 0 (our handlers are put back after ``ray.init``,
which installs its own SIGTERM handler). Ray Serve's Prometheus metrics are served on ``metrics_port``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from clap_edge.core.errors import ClapEdgeError, ImageError, first_line
from clap_edge.runtime.batching import error_message, predict_each
from clap_edge.runtime.scale.cluster import PinnedBundle, check_bundle, connect, import_ray, pin_bundle
from clap_edge.runtime.scale.decode import decode_bytes

__all__ = ["ServeConfig", "serve", "build_app", "start", "stop", "check_bundle", "ReplicaCore", "APP_NAME",
           "TRUE_WORDS"]

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


class ReplicaCore:
    """One replica's request handling, without Ray: route, bound and decode the body, merge concurrent
    requests into model calls of up to ``max_batch_size`` through the serving core, answer each with
    its record or its own error. The Serve deployment wraps it; tests drive it directly."""

    def __init__(self, classifier, max_batch_size: int, max_body_bytes: int, info: dict[str, Any] | None = None,
                 observe: Callable[[int], None] | None = None):
        self.classifier = classifier
        self.n_classes = len(classifier.class_names)
        self.max_batch_size, self.max_body_bytes = max_batch_size, max_body_bytes
        self.info = info or {}
        self.observe = observe or (lambda n: None)  # the model batch-size metric
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.model_task: asyncio.Task | None = None

    # Serve forms a batch every batch_wait_s even while the model is busy (its max_concurrent_batches
    # semaphore is taken after the batch is formed), so with one model call at a time the batches it
    # hands over are tiny (mean 1.4 images measured with 8 clients on ViT-B-32, against 8 in-process).
    # So its batches are let through at once and merged here: the next model call takes everything
    # that arrived while the last one ran, up to max_batch_size.
    async def predict_many(self, arrays: list[np.ndarray]) -> list[Any]:
        """Each array's outcome: its Prediction (all classes, best first), or its own ImageError."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in arrays]
        self.pending.extend(zip(arrays, futures))
        if self.model_task is None or self.model_task.done():
            self.model_task = asyncio.ensure_future(self._run_model())
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def _run_model(self) -> None:
        while self.pending:
            chunk = self.pending[: self.max_batch_size]
            del self.pending[: self.max_batch_size]
            self.observe(len(chunk))
            batch = np.stack([array for array, _ in chunk])
            try:  # full class order per image; each request keeps its own top_k (a prefix of that order)
                outcomes = await asyncio.to_thread(predict_each, self.classifier, batch, self.n_classes,
                                                   [REQUEST_LABEL] * len(chunk))
            except Exception as e:  # the model fails on every image: each request answers 500
                outcomes = [e] * len(chunk)
            for (_, future), outcome in zip(chunk, outcomes):
                if not future.done():
                    future.set_result(outcome)

    async def respond(self, method: str, path: str, query, read_body: Callable, predict: Callable | None = None
                      ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one request; ``read_body(limit)`` gives the body or None past the
        limit, ``predict(array)`` one outcome (the deployment's ``@serve.batch`` method, or predict_many)."""
        path = path.rstrip("/")
        if path.endswith("/v1/health"):
            return 200, {"status": "ok", **self.info}
        if not path.endswith("/v1/classify"):
            return 404, {"error": f"no route {path}; use POST /v1/classify"}
        if method != "POST":
            return 405, {"error": "POST the image bytes to /v1/classify"}
        try:
            top_k, with_embedding = _parse_query(query)
        except ValueError as e:
            return 400, {"error": str(e)}
        body = await read_body(self.max_body_bytes)
        if body is None:
            return 413, {"error": f"request body over {self.max_body_bytes} bytes"}
        try:
            array = await asyncio.to_thread(decode_bytes, self.classifier, body, REQUEST_LABEL)
        except ImageError as e:
            return 422, {"error": error_message(e, REQUEST_LABEL)}
        try:
            outcome = await (predict(array) if predict else self._predict_one(array))
        except Exception as e:  # outcomes are returned, not raised; anything raised still gets a JSON answer
            outcome = e
        if isinstance(outcome, ImageError):  # NaN / inf scores for this image: its own error
            return 422, {"error": error_message(outcome, REQUEST_LABEL)}
        if isinstance(outcome, BaseException):
            return 500, {"error": f"the model failed: {first_line(outcome)}"}
        return 200, prediction_record(outcome, top_k, with_embedding)

    async def _predict_one(self, array: np.ndarray) -> Any:
        return (await self.predict_many([array]))[0]


def _deployment_class():
    """The Serve deployment, built on first use so that importing this module does not import Ray."""
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(name="ClapEdgeClassifier")
    class ClassifierDeployment:
        def __init__(self, pin: PinnedBundle, backend: str, threads: int | None, max_batch_size: int,
                     batch_wait_s: float, max_body_bytes: int):
            from ray.serve.metrics import Histogram  # on the Prometheus port beside Serve's own metrics

            from clap_edge.export.bundle.snapshot import open_snapshot
            from clap_edge.runtime.classifier import Classifier

            # This replica's own private copy, checked here: the bytes it loads are the bytes it verified.
            bundle = open_snapshot(pin.source, manifest_sha256=pin.manifest_sha256, trusted_pems=pin.trusted_pems)
            try:
                classifier = Classifier.open(bundle, backend=backend, threads=threads)  # one load per replica
            except BaseException:
                bundle.close()
                raise
            _drop_batch_advice()
            self.predict.set_max_batch_size(max_batch_size)
            self.predict.set_batch_wait_timeout_s(batch_wait_s)
            sizes = Histogram("clap_edge_model_batch_size", description="images per model call",
                              boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256])
            info = {"bundle": os.path.basename(os.path.normpath(pin.source)), "backend": classifier.runner.name,
                    "classes": len(classifier.class_names), "signed": bool(pin.trusted_pems)}
            self.core = ReplicaCore(classifier, max_batch_size, max_body_bytes, info, observe=sizes.observe)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=1024)
        async def predict(self, arrays: list[np.ndarray]) -> list[Any]:
            return await self.core.predict_many(arrays)

        async def __call__(self, request) -> JSONResponse:
            status, body = await self.core.respond(request.method, request.url.path, request.query_params,
                                                   lambda limit: _read_body(request, limit), self.predict)
            return JSONResponse(body, status)

        def __del__(self):
            core = getattr(self, "core", None)
            if core is not None:
                core.classifier.close()  # removes the private copy

    return ClassifierDeployment


class _BatchAdvice(logging.Filter):
    """Drops Serve's advice to raise ``max_ongoing_requests`` to ``max_batch_size * max_concurrent_batches``:
    the many concurrent batches are deliberate (they are merged into one model call, see ReplicaCore), so
    the advice is wrong here and a user can do nothing with it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("`max_batch_size`")


def _drop_batch_advice() -> None:
    serve_logger = logging.getLogger("ray.serve")
    if not any(isinstance(f, _BatchAdvice) for f in serve_logger.filters):
        serve_logger.addFilter(_BatchAdvice())


def _quiet_driver_logs() -> None:
    """Ray Serve's INFO lines on the driver ("Connecting to existing Serve app", from serve.start followed
    by serve.run on the cluster just started; "Application ... is ready") say nothing a user can act on:
    `serve` prints its own ready line. Warnings and errors still show (Ray's documented logger)."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


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


def build_app(config: ServeConfig, pin: PinnedBundle):
    """The Serve application for ``config`` whose replicas copy and check ``pin`` (:func:`pin_bundle`);
    bind it with ``serve.run`` yourself, or use :func:`serve`."""
    deployment = _deployment_class().options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        graceful_shutdown_timeout_s=config.graceful_shutdown_s,
        graceful_shutdown_wait_loop_s=0.5,
        ray_actor_options={"num_cpus": config.replica_cpus},
    )
    return deployment.bind(pin, config.backend, config.threads, config.max_batch_size,
                           config.batch_wait_ms / 1000.0, int(config.max_body_mb * (1 << 20)))


def start(config: ServeConfig, pin: PinnedBundle, on_connect: Callable[[], None] | None = None) -> None:
    """Connect to (or start) Ray, start Serve's HTTP proxy and deploy ``pin``; returns once replicas are ready.

    ``on_connect`` runs right after Ray is joined (``ray.init`` replaces the SIGTERM handler)."""
    import_ray("serving")
    try:
        from ray import serve as ray_serve
    except ImportError as e:
        raise ClapEdgeError(f"serving needs Ray Serve: pip install 'clap-edge[serve]' ({e})") from None

    cpus = config.num_cpus or max(2, int(np.ceil(config.replicas * config.replica_cpus)))
    # Serve kills an HTTP proxy that is not ready within 5 s, which a busy 2-core machine misses; a local cluster's
    # controller inherits this process's environment, so a longer ready check reaches it.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    connect(config.address, cpus, config.object_store_mb, config.metrics_port)
    if on_connect is not None:
        on_connect()
    _quiet_driver_logs()
    try:
        ray_serve.start(http_options={"host": config.host, "port": config.port})
    except Exception as e:  # ray.exceptions.ActorDiedError, TimeoutError: the proxy never came up
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ClapEdgeError(f"Ray Serve's HTTP proxy did not start on {config.host}:{config.port}: {first}") from None
    try:  # replicas log warnings and errors only, unless an access log (INFO lines) was asked for
        ray_serve.run(build_app(config, pin), name=APP_NAME, route_prefix="/", blocking=False,
                      logging_config={"enable_access_log": config.access_log,
                                      "log_level": "INFO" if config.access_log else "WARNING"})
    except RuntimeError as e:  # a replica failed in its constructor (Ray retried it): one line, its cause
        raise ClapEdgeError(f"{config.bundle}: the replicas could not load the bundle: {_replica_cause(e)}") from None


def _replica_cause(error: BaseException) -> str:
    """The replica's own error line (ours, e.g. a BundleError), from Serve's deployment status: the
    application's failure message only says that the deployment failed."""
    try:
        from ray import serve as ray_serve

        app = ray_serve.status().applications.get(APP_NAME)
        text = "\n".join(d.message for d in app.deployments.values() if d.message) if app else ""
    except Exception:  # no status to read: Serve's own message
        text = ""
    ours = [line.strip() for line in text.splitlines() if line.strip().startswith("clap_edge.") and ": " in line]
    return ours[-1].split(": ", 1)[1] if ours else first_line(error)


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
    """Run until SIGINT / SIGTERM (or ``stop_event``), then shut down gracefully and return."""
    stop_event = stop_event or threading.Event()
    previous: dict[int, Any] = {}

    def install() -> None:  # again after ray.init, whose SIGTERM handler would exit mid-shutdown
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handler = signal.signal(sig, lambda *_: stop_event.set())
                previous.setdefault(sig, handler)

    install()
    started = False
    try:
        # A bad bundle or backend: one line here, before any Ray process starts. The pinned snapshot
        # lives as long as the server, so a replica Serve restarts copies the checked bytes too.
        with pin_bundle(os.path.abspath(config.bundle), config.backend, tuple(config.trusted_keys),
                        remote=bool(config.address)) as pin:
            try:
                start(config, pin, on_connect=install)
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
