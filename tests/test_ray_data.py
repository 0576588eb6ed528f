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
    assert (second.skipped, second.rows, second.classified + second.errors) == (250, 600, 350)
    final = pq.read_table(out).to_pylist()
    assert final[7]["labels"][0] == "kept-from-the-first-run"
    final[7]["labels"] = rows[7]["labels"] = _reference(clf, [paths[7]])[paths[7]].labels
    _check_rows(final, _reference(clf, paths))
    third = classify(paths, runtime_bundle, backend="onnxruntime", threads=1, actors=2, out=out)
    assert (third.skipped, third.classified, third.errors, third.rows) == (600, 0, 0, 600)


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
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"tampered")
    result = CliRunner().invoke(main, ["classify", str(bad), *paths, "--ray", "--backend", "onnxruntime",
                                       "--out", str(tmp_path / "r.parquet")])
    assert result.exit_code == 2 and "sha256" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.parquet").exists()
    stray = CliRunner().invoke(main, ["classify", str(runtime_bundle), *paths, "--out", str(tmp_path / "r.parquet")])
    assert stray.exit_code == 2 and "--ray" in stray.stderr
