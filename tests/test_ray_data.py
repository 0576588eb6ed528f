"""Ray Data batch classification: identical to predict_files, errors as rows, a killed actor loses no row, resumable."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from clap_edge.runtime.scale.ray_data import FAULT_ENV, ClassifierActor, classify, result_schema

N_IMAGES = 5000


def _make_images(root, n, seed=0, broken_every=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        if broken_every and i % broken_every == broken_every - 1:
            path = root / f"{i:05d}.jpg"
            path.write_bytes(b"\xff\xd8 truncated" if i % 2 else b"")
        else:
            path = root / (f"{i:05d}.png" if i % 3 else f"{i:05d}.jpg")
            h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def clf(runtime_bundle):
    from clap_edge.runtime import Classifier

    with Classifier.open(runtime_bundle, backend="onnxruntime", threads=1) as c:
        yield c


def _reference(clf, paths, top_k=5):
    return {p: r for p, r in clf.predict_files(paths, batch_size=32, workers=2, top_k=top_k)}


def _check_rows(rows, reference):
    assert [r["path"] for r in rows] == list(reference)  # every input once, in input order
    for row in rows:
        ref = reference[row["path"]]
        if isinstance(ref, Exception):
            assert row["labels"] is None and row["scores"] is None
            assert row["error"] and row["error"] in str(ref)
        else:
            assert row["error"] is None and row["labels"] == ref.labels
            np.testing.assert_allclose(row["scores"], ref.scores, rtol=1e-5, atol=1e-6)


# ---- fast: the actor's logic without Ray ---------------------------------------------------------


def test_actor_batch_keeps_errors_as_rows(runtime_bundle, clf, tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow not installed (pip install 'clap-edge[serve]')")
    paths = _make_images(tmp_path / "imgs", 12, broken_every=4)
    actor = ClassifierActor(str(runtime_bundle), backend="onnxruntime", threads=1, top_k=3, embeddings=True,
                            decode_workers=2)
    table = actor({"path": np.array(paths, dtype=object)})
    assert table.schema == result_schema(True)
    rows = table.to_pylist()
    _check_rows(rows, _reference(clf, paths, top_k=3))
    assert sum(r["error"] is not None for r in rows) == 3
    good = [r for r in rows if r["error"] is None]
    np.testing.assert_allclose(good[0]["embedding"], clf.predict(good[0]["path"])[0].embedding, rtol=1e-4, atol=1e-5)
    # bytes rows (read_binary_files) decode as the files do; errors name no temp file
    blobs = np.array([open(p, "rb").read() for p in paths], dtype=object)
    from_bytes = actor({"path": np.array(paths, dtype=object), "bytes": blobs}).to_pylist()
    assert [r["labels"] for r in from_bytes] == [r["labels"] for r in rows]
    assert [r["error"] for r in from_bytes] == [r["error"] for r in rows]


# ---- slow: a real local Ray cluster (2 CPUs) -------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray[data] not installed (pip install 'clap-edge[serve]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pythonpath = os.environ.get("PYTHONPATH")  # a source checkout: the actors import clap_edge from it too
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}} if pythonpath else None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    return _make_images(tmp_path_factory.mktemp("ray-images"), N_IMAGES, seed=1, broken_every=500)


@pytest.mark.slow
def test_5000_images_identical_to_predict_files_with_a_killed_actor(ray_cluster, runtime_bundle, clf, many_images,
                                                                   tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    marker = tmp_path / "actor-killed"
    monkeypatch.setenv(FAULT_ENV, str(marker))
    out = tmp_path / "results.parquet"
    result = classify(many_images, runtime_bundle, backend="onnxruntime", threads=1, actors=2, batch_size=32,
                      out=out, decode_workers=1)
    assert marker.exists(), "the fault hook never killed an actor process"
    assert (result.rows, result.errors, result.classified, result.skipped) == (N_IMAGES, 10, N_IMAGES - 10, 0)
    _check_rows(pq.read_table(out).to_pylist(), _reference(clf, many_images))


@pytest.mark.slow
def test_rerun_skips_finished_paths(ray_cluster, runtime_bundle, clf, tmp_path):
    import pyarrow.parquet as pq

    paths = _make_images(tmp_path / "imgs", 600, seed=2, broken_every=100)
    out = tmp_path / "results.parquet"
    # a previous run that stopped after 250 rows; one kept row is marked, so recomputing it would show
    first = classify(paths[:250], runtime_bundle, backend="onnxruntime", threads=1, actors=2, out=out)
    assert first.rows == 250
    table = pq.read_table(out)
    rows = table.to_pylist()
    rows[7]["labels"] = ["kept-from-the-first-run"] * len(rows[7]["labels"])
    pq.write_table(table.from_pylist(rows, schema=table.schema), out)

    second = classify(paths, runtime_bundle, backend="onnxruntime", threads=1, actors=2, out=out)
    # the first run's 2 error rows (paths 99 and 199) are retried: dropped from the kept rows, classified again
    assert (second.skipped, second.retried, second.rows, second.classified + second.errors) == (248, 2, 600, 352)
    final = pq.read_table(out).to_pylist()
    assert final[7]["labels"][0] == "kept-from-the-first-run"
    order = [p for p in paths[:250] if p not in (paths[99], paths[199])] + [paths[99], paths[199]] + paths[250:]
    assert [r["path"] for r in final] == order
    final = sorted(final, key=lambda r: paths.index(r["path"]))
    final[7]["labels"] = rows[7]["labels"] = _reference(clf, [paths[7]])[paths[7]].labels
    _check_rows(final, _reference(clf, paths))
    third = classify(paths, runtime_bundle, backend="onnxruntime", threads=1, actors=2, out=out, keep_errors=True)
    assert (third.skipped, third.classified, third.errors, third.rows, third.retried) == (600, 0, 0, 600, 0)


@pytest.mark.slow
def test_dataset_input_and_cli(ray_cluster, runtime_bundle, clf, tmp_path):
    import json

    import pyarrow.parquet as pq
    import ray.data
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    paths = _make_images(tmp_path / "imgs", 40, seed=3, broken_every=10)
    ds = ray.data.read_binary_files(paths, include_paths=True)
    result = classify(ds, runtime_bundle, backend="onnxruntime", threads=1, actors=1, embeddings=True, top_k=2)
    by_path = {r["path"]: r for r in result.table.to_pylist()}
    reference = _reference(clf, paths, top_k=2)
    assert set(by_path) == set(paths) and result.errors == 4
    for p, ref in reference.items():
        assert by_path[p]["labels"] == (None if isinstance(ref, Exception) else ref.labels)

    out = tmp_path / "cli.parquet"
    cli = CliRunner().invoke(main, ["classify", str(runtime_bundle), str(tmp_path / "imgs"), "--ray", "--out",
                                    str(out), "--actors", "1", "--backend", "onnxruntime", "--json"])
    assert cli.exit_code == 1, cli.output  # some images are broken: reported as rows, exit 1 as classify does
    summary = json.loads(cli.output.splitlines()[0])
    assert summary["rows"] == 40 and summary["errors"] == 4
    _check_rows(pq.read_table(out).to_pylist(), _reference(clf, sorted(paths)))
    no_out = CliRunner().invoke(main, ["classify", str(runtime_bundle), paths[0], "--ray"])
    assert no_out.exit_code == 2 and "--out" in no_out.output


def test_classify_ray_refuses_a_bad_bundle_and_stray_options(runtime_bundle, tmp_path):
    import shutil

    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    paths = _make_images(tmp_path / "imgs", 2)
    bad = shutil.copytree(runtime_bundle, tmp_path / "bad")
    with open(bad / "model.onnx", "r+b") as f:  # same size: the sha256 check is what refuses it
        f.seek(-8, 2)
        f.write(b"tampered")
    result = CliRunner().invoke(main, ["classify", str(bad), *paths, "--ray", "--backend", "onnxruntime",
                                       "--out", str(tmp_path / "r.parquet")])
    assert result.exit_code == 2 and "sha256" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.parquet").exists()
    stray = CliRunner().invoke(main, ["classify", str(runtime_bundle), *paths, "--out", str(tmp_path / "r.parquet")])
    assert stray.exit_code == 2 and "--ray" in stray.stderr


# ---- issue 17: verify what each actor loads; --out lock, bad paths before a cluster, retries, full disk ---------


def _cli(*args):
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _pub(keys, name):
    (pub,) = [p for p in keys.iterdir() if p.name.startswith(name) and p.suffix == ".pub"]
    return pub


@pytest.fixture(scope="module")
def signed_pair(runtime_bundle, keys, tmp_path_factory):
    """(a bundle signed by alice, a forgery also signed by alice: the class names reversed)."""
    import json
    import shutil

    from clap_edge.export.bundle.writer import write_manifest

    root = tmp_path_factory.mktemp("signed")
    good, forged = shutil.copytree(runtime_bundle, root / "good"), shutil.copytree(runtime_bundle, root / "forged")
    m = json.loads((forged / "manifest.json").read_text())
    m["class_names"] = m["class_names"][::-1]
    write_manifest(forged, m, validate=False)
    for b in (good, forged):
        assert _cli("sign", b, "--key", keys / "alice.pem").exit_code == 0
    return good, forged


def _swap(dest, src):
    import shutil

    shutil.rmtree(dest)
    shutil.copytree(src, dest)


def test_actor_refuses_a_bundle_swapped_after_the_driver_pinned_it(signed_pair, keys, tmp_path, clf):
    import shutil

    from clap_edge.core.errors import BundleError
    from clap_edge.runtime.scale.cluster import pin_bundle

    good, forged = signed_pair
    user = shutil.copytree(good, tmp_path / "bundle")
    paths = _make_images(tmp_path / "imgs", 3)
    alice = _pub(keys, "alice")
    for remote in (False, True):
        with pin_bundle(str(user), "onnxruntime", (str(alice),), remote=remote) as pin:
            _swap(user, forged)  # after the driver's check, before any actor loads
            kwargs = dict(backend="onnxruntime", threads=1, manifest_sha256=pin.manifest_sha256,
                          trusted_pems=pin.trusted_pems)
            if remote:  # actors copy the user's path on their node: the pinned manifest refuses the forgery
                with pytest.raises(BundleError, match="changed since it was checked"):
                    ClassifierActor(pin.source, **kwargs)
            else:  # actors copy the driver's verified snapshot: the swap changes nothing
                rows = ClassifierActor(pin.source, **kwargs)({"path": np.array(paths, dtype=object)}).to_pylist()
                assert [r["labels"] for r in rows] == [clf.predict(p)[0].labels for p in paths]
        _swap(user, good)
    # an actor handed the key bytes re-checks the signature itself: a bundle signed by another key is refused
    mallory_signed = shutil.copytree(good, tmp_path / "mallory")
    assert _cli("sign", mallory_signed, "--key", keys / "mallory.pem").exit_code == 0
    with pytest.raises(BundleError, match="signature check failed"):
        ClassifierActor(str(mallory_signed), backend="onnxruntime", threads=1,
                        trusted_pems=(alice.read_bytes(),))


def test_bad_out_refused_before_a_cluster_starts(runtime_bundle, tmp_path, monkeypatch):
    from clap_edge.runtime.scale import ray_data

    def no_cluster(*a, **kw):
        raise AssertionError("a cluster was started for a run that cannot write its --out")

    monkeypatch.setattr(ray_data, "connect", no_cluster)
    img = _make_images(tmp_path / "imgs", 1)[0]
    (tmp_path / "file").write_text("x")
    for out, why in ((tmp_path, "is a directory"), ("/proc/self/results.parquet", "is under /proc"),
                     (tmp_path / "file" / "r.parquet", "cannot create its folder"),
                     (tmp_path / "junk.parquet", "not a readable Parquet file")):
        if str(out).endswith("junk.parquet"):
            out.write_bytes(b"not parquet")
        result = _cli("classify", runtime_bundle, img, "--ray", "--backend", "onnxruntime", "--out", out)
        assert result.exit_code == 2, (out, result.output)
        assert why in result.stderr and "Traceback" not in result.output, result.stderr
        if out != tmp_path:  # (click itself refuses a folder for --out, with its usage lines)
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    from clap_edge.core.errors import OutputError

    with pytest.raises(OutputError, match="is a directory"):  # the library refuses it too
        classify([img], runtime_bundle, backend="onnxruntime", out=tmp_path)


def test_second_run_on_the_same_out_gets_one_line_and_loses_nothing(runtime_bundle, tmp_path, monkeypatch):
    """A first run (another process) holds --out: the second gets one line and exit 2, starts no cluster and
    leaves the first run's file alone."""
    import subprocess
    import sys
    import time

    import pyarrow.parquet as pq

    from clap_edge.runtime.scale import ray_data
    from clap_edge.runtime.scale.cluster import claim_out

    monkeypatch.setattr(ray_data, "connect", lambda *a, **kw: pytest.fail("the loser started a cluster"))
    out = tmp_path / "r.parquet"
    pq.write_table(result_schema(False).empty_table(), out)
    before = out.read_bytes()
    img = _make_images(tmp_path / "imgs", 1)[0]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from clap_edge.runtime.scale.cluster import claim_out\n"
                               "with claim_out(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _cli("classify", runtime_bundle, img, "--ray", "--backend", "onnxruntime", "--out", out)
        assert result.exit_code == 2 and f"another clap-edge process (pid {holder.pid})" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and out.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    with claim_out(out):  # the holder is gone: its lock is stale and the next run may claim --out
        pass


def test_previous_error_rows_are_retried_unless_kept(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clap_edge.runtime.scale.ray_data import _read_previous

    out = tmp_path / "r.parquet"
    rows = {"path": ["a", "b", "c"], "labels": [["cat"], None, ["dog"]], "scores": [[0.9], None, [0.8]],
            "error": [None, "cannot decode image", None]}
    pq.write_table(pa.Table.from_pydict(rows, schema=result_schema(False)), out)
    kept, retried = _read_previous(out, False)
    assert kept.column("path").to_pylist() == ["a", "c"] and retried == 1
    kept, retried = _read_previous(out, False, keep_errors=True)
    assert kept.column("path").to_pylist() == ["a", "b", "c"] and retried == 0


def test_full_disk_while_writing_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno

    import pyarrow as pa
    import pyarrow.parquet as pq

    from clap_edge.core.errors import OutputError
    from clap_edge.runtime.scale.ray_data import _collect

    out = tmp_path / "r.parquet"
    previous = pa.Table.from_pydict({"path": ["a"], "labels": [["cat"]], "scores": [[0.9]], "error": [None]},
                                    schema=result_schema(False))
    pq.write_table(previous, out)
    before = out.read_bytes()

    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(OutputError, match=r"r.parquet: cannot write the results \(No space left on device\)"):
        _collect(None, previous, out, False)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]


@pytest.mark.slow
def test_swap_after_the_check_classifies_the_verified_bundle(ray_cluster, signed_pair, keys, clf, tmp_path,
                                                             monkeypatch):
    """The CLI end to end on a real cluster: the bundle is swapped for another alice-signed one after the driver's
    check and before the actors load; the rows carry the verified bundle's labels, never the forgery's."""
    import contextlib
    import shutil

    import pyarrow.parquet as pq

    from clap_edge.runtime.scale import ray_data

    good, forged = signed_pair
    user = shutil.copytree(good, tmp_path / "bundle")
    real_pin = ray_data.pin_bundle

    @contextlib.contextmanager
    def pin_then_swap(*a, **kw):
        with real_pin(*a, **kw) as pin:
            _swap(user, forged)
            yield pin

    monkeypatch.setattr(ray_data, "pin_bundle", pin_then_swap)
    paths = _make_images(tmp_path / "imgs", 8, seed=5)
    out = tmp_path / "r.parquet"
    result = _cli("classify", user, *paths, "--ray", "--actors", "1", "--backend", "onnxruntime", "--out", out,
                  "--trusted-key", _pub(keys, "alice"))
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    assert [r["labels"] for r in rows] == [clf.predict(p)[0].labels for p in paths]


@pytest.mark.slow
def test_dataset_resume_retries_errors(ray_cluster, runtime_bundle, clf, tmp_path):
    """Resume from a Dataset input: finished paths are skipped, error rows retried (or kept on request)."""
    import pyarrow.parquet as pq
    import ray.data

    paths = _make_images(tmp_path / "imgs", 30, seed=6, broken_every=10)  # 3 broken files
    out = tmp_path / "r.parquet"
    first = classify(ray.data.read_binary_files(paths[:20], include_paths=True), runtime_bundle,
                     backend="onnxruntime", threads=1, out=out)
    assert (first.rows, first.errors) == (20, 2)
    broken = [p for p in paths if p.endswith(("09.jpg", "19.jpg", "29.jpg"))]
    _make_images(tmp_path / "fixed", 30, seed=6)  # the same names, all decodable: copy the fixed ones over
    for p in broken[:1]:
        os.replace(tmp_path / "fixed" / os.path.basename(p), p)
    kept = classify(ray.data.read_binary_files(paths, include_paths=True), runtime_bundle, backend="onnxruntime",
                    threads=1, out=out, keep_errors=True)
    assert (kept.rows, kept.classified + kept.errors, kept.retried, kept.errors) == (30, 10, 0, 1)
    retried = classify(ray.data.read_binary_files(paths, include_paths=True), runtime_bundle, backend="onnxruntime",
                       threads=1, out=out)
    assert (retried.rows, retried.classified + retried.errors, retried.retried, retried.errors) == (30, 3, 3, 2)
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == set(paths) and len(pq.read_table(out)) == 30
    _check_rows([rows[p] for p in paths], _reference(clf, paths))


@pytest.mark.slow
def test_really_full_disk_is_one_line_and_keeps_the_previous_rows(ray_cluster, runtime_bundle, tiny_disk, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tiny_disk / "r.parquet"
    pq.write_table(pa.Table.from_pydict({"path": ["kept"], "labels": [["cat"]], "scores": [[0.9]], "error": [None],
                                         "embedding": [[0.5]]}, schema=result_schema(True)), out)
    before = out.read_bytes()
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk, then free two pages: room for the lock file, not the results
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 8192))
    paths = _make_images(tmp_path / "imgs", 20, seed=7)
    result = _cli("classify", runtime_bundle, *paths, "--ray", "--actors", "1", "--backend", "onnxruntime",
                  "--embeddings", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    ours = [line for line in result.stderr.splitlines() if "r.parquet" in line]  # (Ray logs its own warnings)
    assert len(ours) == 1 and "cannot write the results" in ours[0] and "No space left on device" in ours[0]
    assert out.read_bytes() == before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "r.parquet"]  # no temp file, no lock
