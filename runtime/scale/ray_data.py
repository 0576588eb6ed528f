"""Classify a dataset on a Ray cluster with Ray Data: a pool of classifier actors, results as Parquet.

>>> from clap_edge.runtime.scale.ray_data import classify                      # doctest: +SKIP
>>> result = classify(["photos/a.jpg", "photos/b.png"], "bundle/", actors=4, out="results.parquet")
>>> result.classified, result.errors, result.skipped

* Images are read by Ray: from a list of paths (each actor reads and decodes its batch's files with
  the same decoder as ``clap-edge classify``), or from a Ray Dataset with a ``path`` column and
  optionally a ``bytes`` column (``ray.data.read_binary_files(..., include_paths=True)``).
* ``map_batches`` with a callable class runs ``actors`` classifier actors; each opens the bundle once
  (backend and threads per actor). An image that cannot be decoded becomes a row with an ``error``;
  it never fails the job.
* Actor fault tolerance is Ray Data's: an actor process that dies is restarted and its batch retried
  (its defaults for actor pools: ``max_restarts=-1``, ``max_task_retries=-1``), so no row is lost. Tests kill an actor process for
  real through :data:`FAULT_ENV` (a test hook: the first actor to see the marker file missing
  creates it and exits hard).
* ``out``: rows (``path``, ``labels``, ``scores``, ``error``, ``embedding`` on request) are streamed
  into a Parquet file written atomically. Resumable: rows already in ``out`` are kept and their
  paths skipped, so a rerun after a crash only classifies what is missing; error rows are retried
  (``keep_errors=True`` keeps them). ``out`` is claimed with a lock for the whole run (a second run
  on it gets one line, the first run's rows are never lost) and checked before any Ray process starts.
* Verify what is loaded: the driver checks a private snapshot of the bundle (signature with
  ``trusted_keys``), and each actor opens its own private copy of that snapshot and checks it again
  (the signature against the key bytes it was handed, the manifest sha256 the driver pinned), so a
  bundle swapped after the check is never what an actor classifies with.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from clap_edge.core.errors import ClapEdgeError, ImageError, OutputError
from clap_edge.core.io import atomic_path
from clap_edge.runtime.scale.cluster import claim_out, connect, import_ray, pin_bundle
from clap_edge.runtime.batching import decode_one, error_message, predict_each

__all__ = ["classify", "RayDataResult", "ClassifierActor", "result_schema", "FAULT_ENV"]

# Test hook (documented, off unless set): path of a marker file. The first actor to find it missing
# creates it and kills its own process in the middle of a batch, as an OOM kill or a lost node would.
FAULT_ENV = "CLAP_EDGE_RAY_FAULT_MARKER"


def result_schema(embeddings: bool):
    import pyarrow as pa

    fields = [("path", pa.string()), ("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())),
              ("error", pa.string())]
    if embeddings:
        fields.append(("embedding", pa.list_(pa.float32())))
    return pa.schema(fields)


class ClassifierActor:
    """The Ray Data UDF: one bundle load per actor, a batch of paths (or bytes) in, result rows out."""

    def __init__(self, bundle: str, backend: str = "auto", threads: int | None = None, top_k: int = 5,
                 embeddings: bool = False, decode_workers: int = 1, fault_marker: str | None = None,
                 manifest_sha256: str | None = None, trusted_pems: tuple[bytes, ...] = ()):
        from clap_edge.export.bundle.snapshot import open_snapshot
        from clap_edge.runtime.classifier import Classifier

        # This actor's own private copy, checked here: the bytes it loads are the bytes it verified.
        opened = open_snapshot(bundle, manifest_sha256=manifest_sha256, trusted_pems=trusted_pems)
        try:
            self.classifier = Classifier.open(opened, backend=backend, threads=threads)
        except BaseException:
            opened.close()
            raise
        self.top_k, self.embeddings = top_k, embeddings
        self.schema = result_schema(embeddings)
        self.pool = ThreadPoolExecutor(decode_workers) if decode_workers > 1 else None
        self.fault_marker = fault_marker

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        blobs = batch.get("bytes")
        jobs = [(p, None if blobs is None else blobs[i]) for i, p in enumerate(paths)]
        decoded = list(self.pool.map(self._decode, jobs) if self.pool else map(self._decode, jobs))
        self._maybe_die()
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        rows: dict[str, list] = {name: [None] * len(paths) for name in self.schema.names}
        rows["path"] = paths
        if good:  # the serving core's policy: NaN scores or a model failure on one image is that row's error
            outcomes = predict_each(self.classifier, np.stack([decoded[i] for i in good]), self.top_k,
                                    [paths[i] for i in good])
            for i, pred in zip(good, outcomes):
                if isinstance(pred, ImageError):
                    decoded[i] = error_message(pred, paths[i])
                    continue
                rows["labels"][i], rows["scores"][i] = list(pred.labels), [float(s) for s in pred.scores]
                if self.embeddings:
                    rows["embedding"][i] = np.asarray(pred.embedding, dtype=np.float32)
        for i, d in enumerate(decoded):
            if not isinstance(d, np.ndarray):
                rows["error"][i] = d
        return pa.Table.from_pydict(rows, schema=self.schema)

    def _decode(self, job: tuple[str, Any]) -> np.ndarray | str:
        path, blob = job
        try:  # any decoder surprise is this row's error, never the job's
            return decode_one(self.classifier, path if blob is None else bytes(blob), path)
        except ImageError as e:
            return error_message(e, path)

    def _maybe_die(self) -> None:
        if not self.fault_marker:
            return
        try:
            os.close(os.open(self.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(17)  # a hard death: no exception for Ray Data to see, the process is gone


@dataclass
class RayDataResult:
    rows: int              # rows in the output (kept from a previous run + new)
    classified: int        # new rows with a prediction
    errors: int            # new rows with an error
    skipped: int | None    # inputs skipped because a previous run finished them (None for a Dataset input)
    seconds: float
    retried: int = 0       # error rows of a previous run classified again (dropped from the output first)
    out: str | None = None
    table: Any = None      # a pyarrow.Table of the results when out is None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "table"}


def classify(paths_or_dataset: Iterable[str | os.PathLike] | Any, bundle: str | os.PathLike, *,
             backend: str = "auto", threads: int | None = None, actors: int = 1, batch_size: int = 32,
             top_k: int = 5, embeddings: bool = False, out: str | os.PathLike | None = None,
             decode_workers: int = 1, actor_cpus: float = 1.0, address: str | None = None,
             num_cpus: int | None = None, object_store_mb: int = 256,
             trusted_keys: Iterable[str | os.PathLike] = (), keep_errors: bool = False) -> RayDataResult:
    """Classify every image of ``paths_or_dataset`` with ``actors`` classifier actors on Ray Data.

    ``trusted_keys``: the bundle must be signed by one of them (checked in the driver and in every actor on
    the bytes it loads). ``keep_errors``: keep a previous run's error rows in ``out`` instead of retrying them."""
    if actors < 1 or batch_size < 1 or top_k < 1:
        raise ClapEdgeError("actors, batch_size and top_k must be >= 1")
    with claim_out(out):  # checked and locked before any Ray process exists
        previous, retried = _read_previous(out, embeddings, keep_errors)
        # A bad bundle or backend: one line here, not a failed actor pool.
        with pin_bundle(os.path.abspath(bundle), backend, tuple(trusted_keys), remote=bool(address)) as pin:
            result = _run(paths_or_dataset, pin, previous, out, backend=backend, threads=threads, actors=actors,
                          batch_size=batch_size, top_k=top_k, embeddings=embeddings, decode_workers=decode_workers,
                          actor_cpus=actor_cpus, address=address, num_cpus=num_cpus, object_store_mb=object_store_mb)
    result.retried = retried
    return result


def _run(paths_or_dataset, pin, previous, out, *, backend, threads, actors, batch_size, top_k, embeddings,
         decode_workers, actor_cpus, address, num_cpus, object_store_mb) -> RayDataResult:
    ray = import_ray("Ray Data classification")
    import ray.data as data

    started_here = connect(address, num_cpus or max(2, int(np.ceil(actors * actor_cpus))), object_store_mb)
    t0 = time.perf_counter()
    try:
        done = set(previous.column("path").to_pylist()) if previous is not None else set()
        ctx = data.DataContext.get_current()  # a Dataset copies the current context when it is created
        ctx.execution_options.preserve_order = True  # rows come out in input order, retries included
        ctx.enable_progress_bars = False
        ds, n_inputs = _dataset(data, paths_or_dataset, done, actors)
        if ds is not None:
            ds.context.execution_options.preserve_order = True  # a Dataset the caller made before this call
        # Ray Data's actor pools restart a dead actor and retry its batch (max_restarts=-1, max_task_retries=-1
        # are its defaults for map_batches with a class): no row is lost. Tests kill an actor to check it.
        results = None if ds is None else ds.map_batches(
            ClassifierActor, batch_size=batch_size, batch_format="numpy", concurrency=actors, num_cpus=actor_cpus,
            fn_constructor_kwargs={"bundle": pin.source, "backend": backend, "threads": threads, "top_k": top_k,
                                   "embeddings": embeddings, "decode_workers": decode_workers,
                                   "fault_marker": os.environ.get(FAULT_ENV),
                                   "manifest_sha256": pin.manifest_sha256, "trusted_pems": pin.trusted_pems})
        summary = _collect(results, previous, out, embeddings)
    finally:
        if started_here:
            ray.shutdown()
    skipped = (n_inputs - summary["new"]) if n_inputs is not None else None  # a Dataset's size is not counted
    return RayDataResult(rows=summary["rows"], classified=summary["new"] - summary["errors"],
                         errors=summary["errors"], skipped=skipped, seconds=time.perf_counter() - t0,
                         out=str(out) if out is not None else None, table=summary["table"])


def _dataset(data, source: Any, done: set[str], actors: int):
    """(Ray Dataset of rows still to do, number of inputs or None when the source is a Dataset)."""
    if isinstance(source, data.Dataset):
        if "path" not in source.schema().names:
            raise ClapEdgeError("the dataset needs a 'path' column (read_binary_files(..., include_paths=True))")
        if done:
            source = source.filter(lambda row: row["path"] not in done)
        return source, None
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    paths = [str(p) for p in source]
    todo = [p for p in paths if p not in done]
    if not todo:
        return None, len(paths)
    # Enough blocks for every actor to get work, few enough that Ray's per-block overhead stays small.
    blocks = min(len(todo), max(4 * actors, len(todo) // 1024), 256)
    return data.from_items([{"path": p} for p in todo], override_num_blocks=blocks), len(paths)


def _read_previous(out: str | os.PathLike | None, embeddings: bool, keep_errors: bool = False):
    """(the rows of a previous run to keep, how many of its error rows are dropped to be retried)."""
    if out is None or not Path(out).exists():
        return None, 0
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(out)
    except Exception as e:
        raise ClapEdgeError(f"{out}: exists but is not a readable Parquet file ({e}); move it away or delete it") \
            from None
    schema = result_schema(embeddings)
    if set(schema.names) - set(table.column_names):
        raise ClapEdgeError(f"{out}: has columns {table.column_names}, not a classify result with "
                            f"{schema.names}{' (did the previous run use --embeddings?)' if embeddings else ''}")
    table = table.select(schema.names).cast(schema)
    if keep_errors:
        return table, 0
    ok = table.filter(pc.is_null(table.column("error")))
    return ok, table.num_rows - ok.num_rows


def _collect(results, previous, out: str | os.PathLike | None, embeddings: bool) -> dict[str, Any]:
    """Stream the new rows (after the previous ones) into ``out`` atomically, or into a table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = result_schema(embeddings)
    batches = results.iter_batches(batch_format="pyarrow", batch_size=None) if results is not None else ()
    counts = {"new": 0, "errors": 0, "rows": 0, "table": None}

    def count(table) -> None:
        counts["new"] += table.num_rows
        counts["errors"] += table.num_rows - table.column("error").null_count

    if out is None:
        tables = [t.cast(schema) for t in batches]
        for t in tables:
            count(t)
        table = pa.concat_tables([previous, *tables] if previous is not None else tables or [schema.empty_table()])
        counts["rows"], counts["table"] = table.num_rows, table
        return counts
    try:
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            if previous is not None:
                writer.write_table(previous)
                counts["rows"] += previous.num_rows
            for t in batches:
                t = t.cast(schema)
                writer.write_table(t)
                count(t)
                counts["rows"] += t.num_rows
    except (OSError, pa.ArrowException) as e:  # a full disk: one line; the previous out file is untouched
        raise OutputError(f"{out}: cannot write the results ({getattr(e, 'strerror', None) or e}); "
                          "the previous file, if any, is unchanged") from None
    return counts

classify_dataset = classify  # the name clap_edge.runtime.scale exports
