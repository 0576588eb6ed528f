"""Classifier and backends on a real exported clap-edge-tiny bundle (``runtime_bundle`` in conftest)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from clap_edge.core.errors import BackendUnavailableError, BundleError, ImageError
from clap_edge.export.bundle.writer import write_manifest
from clap_edge.export.bundle import MANIFEST, Bundle, sha256_file
from clap_edge.runtime import Classifier, Prediction
from clap_edge.runtime.backends import create_runner
from clap_edge.runtime.backends.onnxruntime.runner import OnnxRuntimeInt8Runner

CLASSES = ["cat", "dog", "car", "tree", "boat"]


def _photo(w=96, h=72, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def clf(runtime_bundle):
    with Classifier.open(runtime_bundle, backend="onnxruntime", threads=1) as c:
        yield c


@pytest.fixture
def image_dir(tmp_path):
    """Good photos plus every odd-but-valid kind, and one broken file in the middle."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"photo{i}.jpg")
        _photo(seed=i).save(paths[-1])
    odd = {
        "cmyk.jpg": _photo(seed=10).convert("CMYK"),
        "deep.png": Image.fromarray(np.linspace(0, 65535, 40 * 30).astype(np.uint16).reshape(30, 40)),
        "rgba.png": _photo(seed=11).convert("RGBA"),
        "palette.png": _photo(seed=12).convert("P"),
        "gray.png": _photo(seed=13).convert("L"),
        "dot.png": Image.new("RGB", (1, 1), (9, 99, 199)),
    }
    for name, img in odd.items():
        paths.append(tmp_path / name)
        img.save(paths[-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:200])
    paths.insert(4, broken)
    return paths


def _copy_bundle(src, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def _rewrite_manifest(bundle_dir, **changes):
    path = bundle_dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    write_manifest(path.parent, manifest, validate=False)  # with its digest: the edit is what is tested
    return manifest


# ---- predictions --------------------------------------------------------------------


def test_prediction_scores_are_softmax_of_logits_best_first(clf):
    [pred] = clf.predict(_photo(), top_k=len(CLASSES))
    assert isinstance(pred, Prediction)
    assert sorted(pred.labels) == sorted(CLASSES)
    e = np.exp(pred.logits.astype(np.float64) - pred.logits.max())  # softmax by hand
    probs = e / e.sum()
    assert pred.scores == sorted(pred.scores, reverse=True)
    assert np.allclose(pred.scores, [probs[CLASSES.index(label)] for label in pred.labels], atol=1e-6)
    assert abs(sum(pred.scores) - 1.0) < 1e-5
    assert pred.embedding.shape == (64,)
    assert abs(np.linalg.norm(pred.embedding) - 1.0) < 1e-4  # the fused model L2-normalises


def test_top_k_is_clamped_to_the_class_count(clf):
    assert len(clf.predict(_photo(), top_k=100)[0].labels) == len(CLASSES)
    assert len(clf.predict(_photo(), top_k=2)[0].labels) == 2
    with pytest.raises(ValueError, match="top_k"):
        clf.predict(_photo(), top_k=0)


def test_all_input_kinds_agree(clf, tmp_path):
    img = _photo(seed=5)
    path = tmp_path / "x.png"
    img.save(path)
    batch = clf.preprocess(img)[None]
    by_kind = [clf.predict(path)[0], clf.predict(img)[0], clf.predict(np.asarray(img))[0], clf.predict(batch)[0],
               clf.predict_batch(batch)[0]]
    for pred in by_kind[1:]:
        assert pred.labels == by_kind[0].labels
        np.testing.assert_allclose(pred.logits, by_kind[0].logits, atol=1e-6)
    assert by_kind[0].path == str(path) and by_kind[1].path is None


def test_predict_batches_long_inputs(clf):
    images = [_photo(seed=s) for s in range(7)]
    together = clf.predict(images, batch_size=3)
    one_by_one = [clf.predict(im)[0] for im in images]
    assert len(together) == 7
    for a, b in zip(together, one_by_one):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


def test_predict_raises_for_a_broken_path(clf, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    with pytest.raises(ImageError, match="bad.jpg"):
        clf.predict([bad])


def test_predict_files_reports_broken_and_classifies_the_rest(clf, image_dir):
    results = list(clf.predict_files(image_dir, batch_size=3, workers=2, top_k=2))
    assert [p for p, _ in results] == [str(p) for p in image_dir]  # input order, nothing lost
    errors = {p: r for p, r in results if isinstance(r, Exception)}
    assert list(errors) == [str(image_dir[4])]
    assert isinstance(errors[str(image_dir[4])], ImageError) and "broken.jpg" in str(errors[str(image_dir[4])])
    good = [(p, r) for p, r in results if not isinstance(r, Exception)]
    assert len(good) == len(image_dir) - 1  # CMYK, 16-bit, RGBA, palette, gray and 1x1 all classified
    for path, pred in good:
        assert pred.path == path and len(pred.labels) == 2
        np.testing.assert_allclose(pred.logits, clf.predict(path)[0].logits, atol=1e-5)


def test_predict_files_nan_output_is_that_files_error(clf, image_dir, tmp_path):
    """The shared policy: a file the model gives NaN for is yielded as its ImageError (never NaN scores),
    its neighbours in the same batch are classified."""
    from clap_edge.runtime.batching import NON_FINITE
    from serving_stubs import nan_for_white, white_png

    nan_clf = nan_for_white(clf)
    white = white_png(tmp_path / "white.png")
    files = [str(image_dir[0]), white, str(image_dir[1])]
    results = list(nan_clf.predict_files(files, batch_size=3, workers=1, top_k=2))
    assert [p for p, _ in results] == files and nan_clf.runner.batch_sizes == [3]
    assert isinstance(results[1][1], ImageError) and str(results[1][1]) == f"{white}: {NON_FINITE}"
    for path, pred in (results[0], results[2]):
        assert pred.path == path and pred.is_finite()
        np.testing.assert_allclose(pred.logits, clf.predict(path)[0].logits, atol=1e-5)


# ---- backends -------------------------------------------------------------------------


def test_onnxruntime_and_torch_backends_agree(runtime_bundle, clf):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((6, *clf.input_shape)).astype(np.float32)
    with Classifier.open(runtime_bundle, backend="torch", threads=1) as torch_clf:
        assert torch_clf.runner.name == "torch"
        ref = torch_clf.runner.infer(batch)
    out = clf.runner.infer(batch)
    assert np.abs(out.logits - ref.logits).max() <= 1e-4
    assert (out.logits.argmax(1) == ref.logits.argmax(1)).all()
    assert np.abs(out.embedding - ref.embedding).max() <= 1e-4


def test_onnxruntime_threads_option_reaches_the_session(clf):
    assert clf.runner.session.get_session_options().intra_op_num_threads == 1
    assert clf.runner.providers == ["CPUExecutionProvider"]


def test_int8_runner(runtime_bundle, clf):
    with Classifier.open(runtime_bundle, backend="onnxruntime-int8", threads=1) as q:
        assert q.runner.precision == "int8"
        assert q.runner.bundle.variants["int8"] == "model.int8.onnx"
        batch = np.stack([q.preprocess(_photo(seed=s)) for s in range(4)])
        out, ref = q.runner.infer(batch), clf.runner.infer(batch)
        assert out.logits.shape == ref.logits.shape
        assert not np.array_equal(out.logits, ref.logits)  # really the quantised model
        assert np.abs(out.logits - ref.logits).max() < 1.0


def test_int8_not_supported_without_the_file(runtime_bundle, tmp_path):
    src = Bundle.open(runtime_bundle)
    variants = {k: v for k, v in src.variants.items() if k != "int8"}
    bundle = Bundle(src.root, dataclasses.replace(src.manifest, variants=variants))
    assert not OnnxRuntimeInt8Runner.supports(bundle)
    with pytest.raises(BackendUnavailableError, match="onnxruntime:int8.*lacks the .int8. model"):
        create_runner(bundle, "onnxruntime-int8")


def test_unknown_backend_is_a_clear_error(runtime_bundle):
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tensorflow'"):
        Classifier.open(runtime_bundle, backend="tensorflow")


# ---- bundle checks at open ------------------------------------------------------------


def test_missing_model_file(runtime_bundle, tmp_path):
    bundle = _copy_bundle(runtime_bundle, tmp_path)
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing file 'model.onnx'"):
        Classifier.open(bundle, backend="onnxruntime")


@pytest.mark.parametrize("name", ["model.onnx", "model.pt2", "classes.safetensors"])
def test_flipped_byte_is_detected(runtime_bundle, tmp_path, name):
    bundle = _copy_bundle(runtime_bundle, tmp_path)
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    backend = "torch" if name == "model.pt2" else "onnxruntime"
    if backend == "torch":
        pytest.importorskip("torch")
    with pytest.raises(BundleError, match=f"'{name}' is corrupt or was modified"):
        Classifier.open(bundle, backend=backend)


def test_newer_schema_is_refused(runtime_bundle, tmp_path):
    bundle = _copy_bundle(runtime_bundle, tmp_path)
    _rewrite_manifest(bundle, schema_version=99)
    with pytest.raises(BundleError, match="schema_version: 99 is newer"):
        Classifier.open(bundle)


@pytest.mark.parametrize("changes, message", [
    ({"class_names": "cat"}, "field class_names: must be a list, got 'cat'"),
    ({"embed_dim": "64"}, r"field embed_dim: must be an integer in \[1, 65536\], got '64'"),
    ({"inputs": []}, "field inputs: must have 1..16 items, has 0"),
    ({"files": ["model.onnx"]}, "field files: must be an object"),
    ({"files": {"../model.onnx": {"sha256": "0" * 64}}}, r"files\['../model.onnx'\]: names a path outside the bundle"),
    ({"files": {"model.onnx": {}}}, r"files\['model.onnx'\]: must be exactly \{sha256, bytes\}"),
    ({"preprocess": {"size": [224, 224], "resize_mode": "stretch"}}, "field preprocess.fill_color: is missing"),
])
def test_malformed_manifest_is_a_clear_error(runtime_bundle, tmp_path, changes, message):
    bundle = _copy_bundle(runtime_bundle, tmp_path)
    _rewrite_manifest(bundle, **changes)
    with pytest.raises(BundleError, match=message):
        Classifier.open(bundle, backend="onnxruntime")


def test_class_count_mismatch(runtime_bundle, tmp_path):
    bundle = _copy_bundle(runtime_bundle, tmp_path)
    _rewrite_manifest(bundle, class_names=CLASSES + ["extra"])
    with pytest.raises(BundleError, match="5 rows|6 classes"):
        Classifier.open(bundle)


def test_model_output_width_is_checked_against_the_manifest(runtime_bundle, tmp_path):
    """Manifest and class matrix agree on 65-d embeddings, but the model still outputs 64."""
    from safetensors.numpy import save_file

    bundle = _copy_bundle(runtime_bundle, tmp_path)
    manifest = json.loads((bundle / MANIFEST).read_text())
    emb = np.hstack([Bundle.open(runtime_bundle).class_embeddings(), np.zeros((5, 1), dtype=np.float32)])
    save_file({"class_embeddings": emb}, str(bundle / "classes.safetensors"))
    manifest["files"]["classes.safetensors"] = {"sha256": sha256_file(bundle / "classes.safetensors"),
                                                "bytes": (bundle / "classes.safetensors").stat().st_size}
    manifest["outputs"][0]["shape"] = ["N", 65]
    _rewrite_manifest(bundle, embed_dim=65, files=manifest["files"], outputs=manifest["outputs"])
    with pytest.raises(BundleError, match=r"model.onnx declares 'embedding' with shape \['N', 64\]"):
        Classifier.open(bundle, backend="onnxruntime")
    pytest.importorskip("torch")
    with pytest.raises(BundleError, match=r"gives embeddings of shape \[1, 64\].*\[1, 65\]"):
        Classifier.open(bundle, backend="torch")


# ---- no torch on the device ------------------------------------------------------------


def test_runtime_works_with_torch_and_open_clip_unimportable(runtime_bundle, clf, tmp_path):
    path = tmp_path / "x.jpg"
    _photo(seed=21).save(path)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None          # any "import torch" now raises ImportError
        sys.modules["open_clip"] = None
        sys.modules["torchvision"] = None
        from clap_edge.core.errors import BackendUnavailableError
        from clap_edge.runtime import Classifier
        from clap_edge.runtime.backends import available_backends
        from clap_edge.export.bundle import Bundle
        with Classifier.open({str(runtime_bundle)!r}, backend="auto", threads=1) as clf:
            [pred] = clf.predict([{str(path)!r}], top_k=5)
            backend = clf.runner.name
        try:
            Classifier.open({str(runtime_bundle)!r}, backend="torch")
            torch_error = None
        except BackendUnavailableError as e:
            torch_error = str(e)
        print(json.dumps({{"backend": backend, "labels": pred.labels, "logits": pred.logits.tolist(),
                           "available": available_backends(Bundle.open({str(runtime_bundle)!r})),
                           "torch_error": torch_error,
                           "loaded": sorted(m for m in ("torch", "open_clip", "torchvision")
                                            if sys.modules.get(m) is not None)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "onnxruntime"
    assert out["loaded"] == []
    assert "torch" not in out["available"]
    assert "not installed" in out["torch_error"] and "clap-edge[torch]" in out["torch_error"]
    ref = clf.predict(path)[0]
    assert out["labels"] == ref.labels
    np.testing.assert_allclose(out["logits"], ref.logits, atol=1e-6)


def test_predict_files_decodes_a_bounded_window_ahead(clf, tmp_path, monkeypatch):
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"{i}.png")
        _photo(32, 32, seed=i).save(paths[-1])
    decoded = []
    preprocess = clf.preprocess
    monkeypatch.setattr(clf, "preprocess", lambda p: (decoded.append(p), preprocess(p))[1])
    it = clf.predict_files(paths, batch_size=2, workers=1, prefetch_batches=2)
    first = next(it)
    it.close()  # stop early: queued decodes are cancelled, the pool shuts down
    assert first[0] == str(paths[0]) and isinstance(first[1], Prediction)
    assert 2 <= len(decoded) <= 2 * (1 + 2) + 2  # the current batch plus the prefetch window, not all 40
