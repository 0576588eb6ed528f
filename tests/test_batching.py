"""BatchingClassifier: load from many threads, results equal predict(), failures isolated, back-pressure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest
from PIL import Image

from clap_edge.core.errors import ImageError
from clap_edge.runtime.batching import NON_FINITE, BatchingClassifier, QueueFullError, error_record, predict_each
from serving_stubs import nan_for_white, white_png


@pytest.fixture(scope="module")
def clf(runtime_bundle):
    from clap_edge.runtime import Classifier

    with Classifier.open(runtime_bundle, backend="onnxruntime", threads=1) as c:
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small JPEG/PNG files of different sizes and 8 in-memory uint8 arrays."""
    root = tmp_path_factory.mktemp("batching-images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        path = root / (f"img{i:02d}.jpg" if i % 3 else f"img{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    arrays = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(8)]
    broken = root / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    return paths, arrays, str(broken)


def _same(pred, ref) -> None:
    assert pred.labels == ref.labels
    np.testing.assert_allclose(pred.scores, ref.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.embedding, ref.embedding, rtol=1e-4, atol=1e-5)


def test_load_2000_requests_from_8_threads_equal_predict(clf, images):
    paths, arrays, broken = images
    inputs = paths + arrays
    reference = clf.predict(inputs, top_k=3)
    n_threads, per_thread = 8, 250
    futures: list[list] = [[] for _ in range(n_threads)]
    bad_futures = []

    with BatchingClassifier(clf, max_batch_size=16, max_delay_ms=2, max_queue=64, top_k=3) as bc:
        def client(t: int) -> None:
            for i in range(per_thread):
                k = (t * per_thread + i) % len(inputs)
                futures[t].append((k, bc.submit(inputs[k])))
                if t == 3 and i == 100:
                    bad_futures.append(bc.submit(broken))

        threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    # close() has returned: every future must be resolved, none lost
    flat = [item for per in futures for item in per]
    assert len(flat) == n_threads * per_thread == 2000
    assert all(f.done() for _, f in flat) and bad_futures[0].done()
    for k, f in flat:
        pred = f.result(timeout=0)
        _same(pred, reference[k])
        assert pred.path == (paths[k] if k < len(paths) else None)
    with pytest.raises(ImageError, match="broken.jpg"):
        bad_futures[0].result(timeout=0)
    assert max(bc.batch_sizes) > 1, "requests were never batched together"
    assert sum(bc.batch_sizes) == 2000  # the broken image never reached the model


def test_close_drains_everything_queued(clf, images):
    paths, _, _ = images
    bc = BatchingClassifier(clf, max_batch_size=8, max_delay_ms=50, max_queue=1024)
    futures = [bc.submit(p) for p in paths * 5]
    bc.close()  # immediately: nothing has to be finished yet
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        bc.submit(paths[0])


class _GatedClassifier:
    """Wraps a classifier; predict_batch waits for ``gate`` and refuses rows filled with NaN."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.calls = 0

    def preprocess(self, image):
        if isinstance(image, np.ndarray) and image.dtype == np.float32:
            return image  # already preprocessed [3, H, W]
        return self.inner.preprocess(image)

    def predict_batch(self, batch, top_k=5):
        self.gate.wait(timeout=30)
        self.calls += 1
        if np.isnan(batch).any():
            raise ValueError("NaN input")
        return self.inner.predict_batch(batch, top_k)


def test_model_error_fails_only_that_request(clf):
    gated = _GatedClassifier(clf)
    gated.gate.set()
    good = np.random.default_rng(1).standard_normal((6, *clf.input_shape)).astype(np.float32)
    poison = np.full(clf.input_shape, np.nan, dtype=np.float32)
    with BatchingClassifier(gated, max_batch_size=8, max_delay_ms=200) as bc:
        futures = [bc.submit(x) for x in good[:3]] + [bc.submit(poison)] + [bc.submit(x) for x in good[3:]]
    with pytest.raises(ImageError, match=r"the model failed on this image \(ValueError: NaN input\)"):
        futures[3].result(timeout=0)
    ok = [f.result(timeout=0) for i, f in enumerate(futures) if i != 3]
    for pred, ref in zip(ok, clf.predict_batch(good, top_k=5)):
        _same(pred, ref)


def test_back_pressure_raise_mode(clf):
    gated = _GatedClassifier(clf)  # the model is blocked until the gate opens: the queue must fill
    x = np.zeros(clf.input_shape, dtype=np.float32)
    bc = BatchingClassifier(gated, max_batch_size=1, max_delay_ms=0, max_queue=2, block=False)
    accepted = []
    try:
        with pytest.raises(QueueFullError, match="2 requests"):
            for _ in range(50):
                accepted.append(bc.submit(x))
                time.sleep(0.01)  # let the workers pull what they can
        # the workers hold a bounded number (one in the model, two ready, one being batched)
        assert 2 <= len(accepted) <= 2 + 4
    finally:
        gated.gate.set()
        bc.close()
    assert all(f.result(timeout=0).labels for f in accepted)


def test_back_pressure_block_mode_waits(clf):
    gated = _GatedClassifier(clf)
    x = np.zeros(clf.input_shape, dtype=np.float32)
    bc = BatchingClassifier(gated, max_batch_size=1, max_delay_ms=0, max_queue=1, block=True)
    futures = []
    submitter = threading.Thread(target=lambda: futures.extend(bc.submit(x) for _ in range(12)))
    submitter.start()
    submitter.join(timeout=0.5)
    assert submitter.is_alive(), "submit() should block while the queue is full"
    gated.gate.set()
    submitter.join(timeout=30)
    bc.close()
    assert not submitter.is_alive() and len(futures) == 12
    done, _ = wait(futures, timeout=0)
    assert len(done) == 12 and gated.calls == 12


def test_partial_batch_is_flushed_on_close_deterministically(clf, images):
    """Fewer requests than max_batch_size and a delay that never expires: only close() can flush them, as one
    batch, and each future gets its own image's prediction (no sleeps, no timing)."""
    paths, arrays, _ = images
    requests = [paths[0], arrays[0], paths[5]]
    seen = []

    class Recording(_GatedClassifier):
        def predict_batch(self, batch, top_k=5):
            seen.append(batch.shape[0])
            return self.inner.predict_batch(batch, top_k)

    bc = BatchingClassifier(Recording(clf), max_batch_size=8, max_delay_ms=1e8)  # ~28 hours
    futures = [bc.submit(image) for image in requests]
    assert not any(f.done() for f in futures)  # the batch is neither full nor timed out
    bc.close()
    assert seen == [3]
    for future, image in zip(futures, requests):
        _same(future.result(timeout=0), clf.predict([image], top_k=5)[0])


def test_nan_output_is_that_images_error_in_a_shared_batch(clf, images, tmp_path):
    """The model gives NaN for the white image only: its future fails with an ImageError naming it, its
    neighbours in the same model call get their real predictions."""
    paths, arrays, _ = images
    nan_clf = nan_for_white(clf)
    white = white_png(tmp_path / "white.png")
    requests = [paths[0], arrays[0], white, paths[1], arrays[1]]
    bc = BatchingClassifier(nan_clf, max_batch_size=8, max_delay_ms=1e8)  # one batch, flushed by close()
    futures = [bc.submit(r) for r in requests]
    bc.close()
    assert nan_clf.runner.batch_sizes == [5]  # one model call: nothing retried, nothing split
    with pytest.raises(ImageError) as info:
        futures[2].result(timeout=0)
    assert str(info.value) == f"{white}: {NON_FINITE}"
    for i in (0, 1, 3, 4):
        _same(futures[i].result(timeout=0), clf.predict([requests[i]])[0])


def test_predict_files_and_batching_report_nan_with_the_same_record(clf, images, tmp_path):
    paths, _, _ = images
    nan_clf = nan_for_white(clf)
    white = white_png(tmp_path / "white.png")
    files = [paths[2], white, paths[3]]
    results = dict(nan_clf.predict_files(files, batch_size=3, workers=1, top_k=3))
    assert isinstance(results[white], ImageError)
    with BatchingClassifier(nan_clf, top_k=3) as bc:
        batched = bc.submit(white).exception(timeout=30)
    assert error_record(white, results[white]) == error_record(white, batched) == {"path": white, "error": NON_FINITE}
    for p in (paths[2], paths[3]):
        _same(results[p], clf.predict([p], top_k=3)[0])


def test_ray_data_actor_rows_follow_the_same_policy(clf, images, tmp_path):
    """Ray Data's actor (called directly, no cluster): the NaN image is an error row with the same message,
    its neighbours in the same model call are classified, an undecodable file is its own error row."""
    pytest.importorskip("pyarrow")
    from clap_edge.runtime.scale.ray_data import ClassifierActor

    paths, _, broken = images
    white = white_png(tmp_path / "white.png")
    actor = ClassifierActor(str(clf.bundle.root), backend="onnxruntime", threads=1, top_k=3)
    own = actor.classifier
    try:
        actor.classifier = nan_for_white(own)
        files = [paths[4], white, broken, paths[5]]
        rows = actor({"path": np.array(files)}).to_pylist()
    finally:
        own.close()
    assert actor.classifier.runner.batch_sizes == [3]
    assert [r["path"] for r in rows] == files
    assert rows[1]["error"] == NON_FINITE and rows[1]["labels"] is None
    assert rows[2]["error"].startswith("cannot decode image")
    for row, p in ((rows[0], paths[4]), (rows[3], paths[5])):
        assert row["error"] is None and row["labels"] == clf.predict([p], top_k=3)[0].labels


class _FailsOn:
    """predict_batch raises for any batch holding a NaN row (a model that breaks on one input)."""

    def __init__(self, inner, always: bool = False):
        self.inner, self.always = inner, always

    def predict_batch(self, batch, top_k=5):
        if self.always or np.isnan(batch).any():
            raise RuntimeError("backend exploded")
        return self.inner.predict_batch(batch, top_k)


def test_predict_each_isolates_the_image_that_breaks_the_model_and_raises_for_a_broken_model(clf):
    good = np.random.default_rng(3).standard_normal((3, *clf.input_shape)).astype(np.float32)
    batch = np.concatenate([good[:1], np.full((1, *clf.input_shape), np.nan, np.float32), good[1:]])
    outcomes = predict_each(_FailsOn(clf), batch, 2, ["a", "b", "c", "d"])
    assert isinstance(outcomes[1], ImageError)
    assert str(outcomes[1]) == "b: the model failed on this image (RuntimeError: backend exploded)"
    for outcome, ref in zip([outcomes[0], *outcomes[2:]], clf.predict_batch(good, top_k=2)):
        _same(outcome, ref)
    with pytest.raises(RuntimeError, match="exploded"):  # fails on every image alone too: the model is broken
        predict_each(_FailsOn(clf, always=True), good, 2, ["a", "b", "c"])


def test_bytes_and_file_objects_are_decoded_like_files(clf, images):
    paths, _, _ = images
    data = open(paths[6], "rb").read()
    with BatchingClassifier(clf, max_batch_size=4, max_delay_ms=1e8) as bc, open(paths[7], "rb") as f:
        futures = [bc.submit(data), bc.submit(f), bc.submit(b"junk")]
        bc.close()  # flush while the file is still open
    _same(futures[0].result(timeout=0), clf.predict([paths[6]])[0])
    _same(futures[1].result(timeout=0), clf.predict([paths[7]])[0])
    with pytest.raises(ImageError, match="^image bytes: cannot decode image"):
        futures[2].result(timeout=0)
