"""Classes as data (schema 4): rewrite_classes, the runtime applying W and b, Classifier.set_class_matrix."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import Bundle, rewrite_classes
from clap_edge.export.bundle.names import CLASSES_FILE, SIGNATURE_FILE, sha256_file
from clap_edge.runtime.classifier import Classifier


def _unit(rng, c, d):
    w = rng.standard_normal((c, d)).astype(np.float32)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def batch(runtime_bundle):
    with Bundle.open(runtime_bundle) as b:
        return np.random.default_rng(3).standard_normal((4, *b.input_shape)).astype(np.float32)


def test_rewrite_new_bundle_applies_matrix_and_bias(runtime_bundle, tmp_path, batch):
    rng = np.random.default_rng(0)
    names, w, bias = ["forklift", "pallet"], _unit(rng, 2, 64), np.array([0.5, -1.25], np.float32)
    before = sha256_file(runtime_bundle / CLASSES_FILE)
    out = rewrite_classes(runtime_bundle, tmp_path / "new", class_names=names, class_matrix=w, bias=bias,
                          provenance={"method": "linear-probe", "shots": 4})
    assert sha256_file(runtime_bundle / CLASSES_FILE) == before  # the source is untouched
    with Bundle.open(out) as b:
        assert b.class_names == names and b.manifest.classes.bias
        assert b.manifest.classes.provenance == {"method": "linear-probe", "shots": 4}
        np.testing.assert_array_equal(b.class_embeddings(), w)
        np.testing.assert_array_equal(b.class_bias(), bias)
        scale = b.manifest.logit_scale
    with Classifier.open(out, backend="onnxruntime") as clf:
        out_batch = clf.runner.infer(batch)
        preds = clf.predict_batch(batch, top_k=2)
    # independent reference: the embedding the model gives, times the matrix, by hand in float64
    want = scale * out_batch.embedding.astype(np.float64) @ w.T.astype(np.float64) + bias
    np.testing.assert_allclose(out_batch.logits, want, atol=1e-4)
    assert [p.label for p in preds] == [names[i] for i in want.argmax(1)]


def test_rewrite_in_place_and_errors(runtime_bundle, tmp_path, batch):
    root = tmp_path / "b"
    shutil.copytree(runtime_bundle, root)
    w = _unit(np.random.default_rng(1), 3, 64)
    assert rewrite_classes(root, class_names=["a", "b", "c"], class_matrix=w, in_place=True) == root
    with Classifier.open(root, backend="onnxruntime") as clf:
        assert clf.class_names == ["a", "b", "c"] and clf.runner.infer(batch).logits.shape == (4, 3)
    data = json.loads((root / "manifest.json").read_text())
    assert data["classes"] == {"bias": False, "provenance": {}}
    for kwargs, message in (
        (dict(class_names=["a", "b"], class_matrix=w), r"shape \[3, 64\]"),
        (dict(class_names=["a", "a", "b"], class_matrix=w), "class_names"),
        (dict(class_names=["a", "b", "c"], class_matrix=w[:, :10]), r"need \[3, 64\]"),
        (dict(class_names=["a", "b", "c"], class_matrix=w * np.nan), "NaN"),
        (dict(class_names=["a", "b", "c"], class_matrix=w, bias=np.zeros(2)), "class bias"),
    ):
        with pytest.raises(BundleError, match=message):
            rewrite_classes(root, tmp_path / "x", **kwargs)
    with pytest.raises(BundleError, match="either"):
        rewrite_classes(root, class_names=["a", "b", "c"], class_matrix=w)


def test_rewrite_signed_bundle_drops_or_resigns(runtime_bundle, tmp_path, keys, caplog):
    from clap_edge.export.bundle.signing import sign_bundle

    root = tmp_path / "signed"
    shutil.copytree(runtime_bundle, root)
    sign_bundle(root, keys / "alice.pem")
    w = _unit(np.random.default_rng(2), 2, 64)
    with caplog.at_level(logging.WARNING):
        dropped = rewrite_classes(root, tmp_path / "unsigned", class_names=["x", "y"], class_matrix=w)
    assert not (dropped / SIGNATURE_FILE).exists() and "dropped" in caplog.text
    resigned = rewrite_classes(root, tmp_path / "resigned", class_names=["x", "y"], class_matrix=w,
                               key=keys / "alice.pem")
    with Bundle.open(resigned, trusted_keys=[keys / "alice.pub"]) as b:
        assert b.class_names == ["x", "y"]
    with pytest.raises(BundleError):
        Bundle.open(resigned, trusted_keys=[keys / "mallory.pub"])


def test_set_class_matrix_in_memory(runtime_bundle, batch):
    w = _unit(np.random.default_rng(4), 2, 64)
    with Classifier.open(runtime_bundle, backend="onnxruntime") as clf:
        emb = clf.runner.infer(batch).embedding
        clf.set_class_matrix(["p", "q"], w, bias=np.array([0.0, 3.0], np.float32))
        logits = clf.runner.infer(batch).logits
        assert clf.predict_batch(batch)[0].labels[0] in ("p", "q")
        with pytest.raises(ValueError, match="shape"):
            clf.set_class_matrix(["p"], w)
    np.testing.assert_allclose(logits, clf.runner.classes.scale * emb @ w.T + [0.0, 3.0], atol=1e-4)


def test_schema_3_refused_with_reexport_line(runtime_bundle, tmp_path):
    from clap_edge.export.bundle.writer import write_manifest

    root = tmp_path / "v3"
    shutil.copytree(runtime_bundle, root)
    data = json.loads((root / "manifest.json").read_text())
    data["schema_version"] = 3
    write_manifest(root, data, validate=False)
    with pytest.raises(BundleError, match=r"schema_version: 3 is older .*re-export the bundle"):
        Bundle.open(root)


# ---- words on the device: export --text-encoder, `clap-edge classes`, Classifier.set_classes ----------------

TEMPLATES = ["a photo of a {c}.", "a sketch of the {c}"]
NO_TORCH = ("import sys; sys.modules.update({m: None for m in ('torch', 'open_clip', 'torchvision')}); "
            "from clap_edge.apps.cli import main; main()")


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    import torch

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("text") / "bundle"
    return export_bundle(ExportConfig(out=out, model_name="clap-edge-tiny", classes=["cat", "dog", "car"],
                                      templates=TEMPLATES, torch_program=False, text_encoder=True))


def _torch_classes(names):
    """The reference: open_clip + torch, as an export embeds classes (clap_edge.fuse.class_embeddings)."""
    import torch

    from clap_edge.fuse import class_embeddings
    from clap_edge.models import load_model

    torch.manual_seed(0)  # the same random init as the fixture's export
    loaded = load_model("clap-edge-tiny")
    return class_embeddings(loaded.model, loaded.tokenizer, names, TEMPLATES).numpy()


def test_text_encoder_listed_checked_and_within_1e5(text_bundle):
    with Bundle.open(text_bundle) as b:
        text = b.manifest.text
        assert text.file == "text.onnx" and text.context_length == 32
        assert set(text.tokenizer["files"].values()) <= set(b.manifest.files)
        assert b.verify_all()[text.file] == "ok"
        assert text.extra["parity"]["fp32"]["max_abs_diff"] <= 1e-5
        np.testing.assert_allclose(b.class_embeddings(), _torch_classes(["cat", "dog", "car"]), atol=1e-5)


def test_classes_cli_without_torch_matches_a_torch_export(text_bundle, tmp_path, batch):
    import subprocess
    import sys

    names = ["forklift", "pallet jack", "Kätzchen", "café crème", "🚜 tractor"]
    run = subprocess.run([sys.executable, "-c", NO_TORCH, "classes", str(text_bundle), "--set", ",".join(names),
                          "--out", str(tmp_path / "new"), "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["classes"] == names and result["removed"] == ["cat", "dog", "car"]
    reference = _torch_classes(names)
    with Bundle.open(tmp_path / "new") as b:
        assert b.manifest.classes.provenance["method"] == "zero-shot-text"
        assert np.abs(b.class_embeddings() - reference).max() <= 1e-5
        scale = b.manifest.logit_scale
    with Classifier.open(tmp_path / "new", backend="onnxruntime") as clf:
        out = clf.runner.infer(batch)
    want = scale * out.embedding.astype(np.float64) @ reference.T.astype(np.float64)
    assert (out.logits.argmax(1) == want.argmax(1)).all()
    # add / remove keep the other rows as they were; a missing name is one line, exit 2
    run = subprocess.run([sys.executable, "-c", NO_TORCH, "classes", str(tmp_path / "new"), "--add", "cat",
                          "--remove", "pallet jack,Kätzchen", "--in-place"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with Bundle.open(tmp_path / "new") as b:
        assert b.class_names == ["forklift", "café crème", "🚜 tractor", "cat"]
        np.testing.assert_allclose(b.class_embeddings(), _torch_classes(b.class_names), atol=1e-5)
    bad = subprocess.run([sys.executable, "-c", NO_TORCH, "classes", str(text_bundle), "--remove", "zebra",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ") and "zebra" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x").exists()


def test_set_classes_in_memory_and_bundles_without_text(text_bundle, runtime_bundle, batch):
    names = ["forklift", "pallet"]
    with Classifier.open(text_bundle, backend="onnxruntime") as clf:
        clf.set_classes(names)
        logits = clf.runner.infer(batch).logits
        assert clf.predict_batch(batch, top_k=1)[0].label in names
    emb = Classifier.open(text_bundle, backend="onnxruntime").runner.infer(batch).embedding
    np.testing.assert_allclose(logits, clf.runner.classes.scale * emb @ _torch_classes(names).T, atol=1e-3)
    with Classifier.open(runtime_bundle, backend="onnxruntime") as clf:
        with pytest.raises(BundleError, match="no text encoder in this bundle; export it with"):
            clf.set_classes(names)
