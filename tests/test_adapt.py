"""``clap-edge adapt`` and the few-shot evaluation: the device path repeats the evaluation's probe, changes
what ``classify`` answers, keeps the bundle checkable and signed, and refuses bad shot folders in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from clap_edge.apps.cli import main
from clap_edge.toyworld.world import CLASSES

DOMAINS = ("id", "color_shift")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small toy-world dataset, a seeded CLAP head on the shipped toy CLIP, and its bundle (fp32 only)."""
    import torch

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle
    from clap_edge.head import CLAPHead, HeadConfig
    from clap_edge.toyworld.dataset import write_dataset

    root = tmp_path_factory.mktemp("adapt")
    write_dataset(root / "data", domains=DOMAINS, per_class=6, seed=3)
    torch.manual_seed(2)
    head = CLAPHead(HeadConfig(in_dim=64, latent_dim=32, alpha=0.3, model_name="clap-edge-toy",
                               pretrained="toyworld", class_names=list(CLASSES)))
    torch.nn.init.normal_(head.projection.weight, std=0.2)
    head_path = head.save(root / "head.safetensors")
    bundle = export_bundle(ExportConfig(out=root / "bundle", head=head_path, torch_program=False))
    return root, head, bundle


def _write_shots(dst, split_root, shots, domains_images):
    """The drawn shots as DIR/<class>/<domain>__<file>: the layout whose sorted order is the draw's order."""
    for d, i in shots:
        path, label = domains_images[d].paths[i], domains_images[d].labels[i]
        folder = dst / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"{d}__{path.name}")
    return dst


def _predict(bundle, paths):
    from clap_edge.runtime.classifier import Classifier

    with Classifier.open(bundle, backend="onnxruntime") as clf:
        return [p.label for p in clf.predict([str(p) for p in paths], top_k=1)]


@pytest.mark.parametrize("method", ["linear", "prototype"])
def test_device_path_repeats_the_evaluation_probe(toy, tmp_path, method):
    """Same shots, same seed: adapt (bundle embeddings, ONNX Runtime) and the evaluation (open_clip + head in
    torch) give >= 99% identical predictions on the held-out domain."""
    from clap_edge.core.datasets import scan_domains
    from clap_edge.core.probe import ProbeConfig
    from clap_edge.fewshot import FewShotConfig, draw_shots, feature_sets, fit_draw
    from clap_edge.models import load_model
    from clap_edge.runtime.adapt import AdaptConfig, adapt_bundle
    from clap_edge.zeroshot import encode_images

    root, head, bundle = toy
    loaded = load_model("clap-edge-toy", "toyworld")
    _, val = scan_domains(root / "data" / "val", list(CLASSES))
    _, test = scan_domains(root / "data" / "test", list(CLASSES))
    raw = {d: encode_images(loaded, images).features for d, images in val.items()}
    feats, _ = feature_sets(raw, {"clap": head}, None)
    test_feats, _ = feature_sets({"id": encode_images(loaded, test["id"]).features}, {"clap": head}, None)
    config = FewShotConfig(shots=(4,), probe=ProbeConfig(method=method, seed=7))
    labels = {d: np.asarray(images.labels) for d, images in val.items()}
    shots = draw_shots(labels, ["color_shift"], len(CLASSES), 4, draw=1, seed=0)
    probe = fit_draw(feats["clap"], labels, shots, len(CLASSES), config.draw_probe(1))
    expected = [CLASSES[i] for i in probe.predict(test_feats["clap"]["id"])]

    shots_dir = _write_shots(tmp_path / "shots", root / "data" / "val", shots, val)
    report = adapt_bundle(bundle, shots_dir, tmp_path / "adapted", config=AdaptConfig(method=method, seed=8))
    assert report["classes"] == list(CLASSES) and report["bias"] == (method == "linear")
    from clap_edge.export.bundle import Bundle, ClassMatrix

    with Bundle.open(tmp_path / "adapted") as b:  # the stored matrix is the evaluation's probe, rescaled
        stored = ClassMatrix.from_bundle(b)
    scale = stored.scale if method == "linear" else 1.0
    np.testing.assert_allclose(stored.weights * scale, probe.weight, atol=2e-3)
    got = _predict(tmp_path / "adapted", test["id"].paths)
    agree = np.mean([a == b for a, b in zip(got, expected)])
    assert agree >= 0.99, (agree, got, expected)
    truth = [CLASSES[i] for i in test["id"].labels]
    assert np.mean([a == b for a, b in zip(got, truth)]) > 2 / len(CLASSES)  # it learned something


def test_adapt_cli_new_classes_change_classify_and_stay_signed(toy, tmp_path, keys):
    root, _, bundle = toy
    shots = tmp_path / "shots"
    new = {"arrow": "pointer", "circle": "ring", "cross": "cross"}  # two new names, one the bundle has
    for old, name in new.items():
        shutil.copytree(root / "data" / "val" / "color_shift" / old, shots / name)
    out = tmp_path / "adapted"
    runner = CliRunner()
    r = runner.invoke(main, ["adapt", str(bundle), "--shots", str(shots), "--out", str(out), "--seed", "1",
                             "--key", str(keys / "alice.pem"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["classes"] == ["cross", "pointer", "ring"] and report["new_classes"] == ["pointer", "ring"]
    assert set(report["dropped_classes"]) == set(CLASSES) - {"cross"}
    assert report["held_out_check"]["shots"] == 3 and 0 <= report["held_out_check"]["adapted_top1"] <= 100
    images = [p for c in new for p in sorted((root / "data" / "test" / "id" / c).iterdir())]
    r = runner.invoke(main, ["classify", str(out), *map(str, images), "--json", "--top-k", "1"])
    assert r.exit_code == 0, r.output
    labels = [json.loads(line)["labels"][0] for line in r.stdout.splitlines()]
    assert set(labels) <= {"cross", "pointer", "ring"}
    truth = [new[p.parent.name] for p in images]
    assert np.mean([a == b for a, b in zip(labels, truth)]) > 0.5
    assert runner.invoke(main, ["inspect", str(out)]).exit_code == 0
    r = runner.invoke(main, ["verify", str(out), "--trusted-key", str(keys / "alice.pub")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["verify", str(out), "--trusted-key", str(keys / "mallory.pub")])
    assert r.exit_code != 0


def test_blend_zero_keeps_the_zero_shot_answers(toy, tmp_path):
    from clap_edge.runtime.adapt import AdaptConfig, adapt_bundle

    root, _, bundle = toy
    adapt_bundle(bundle, root / "data" / "val" / "id", tmp_path / "b0", config=AdaptConfig(blend=0.0))
    paths = sorted((root / "data" / "test" / "color_shift").glob("*/*.png"))
    assert _predict(tmp_path / "b0", paths) == _predict(bundle, paths)


@pytest.mark.parametrize("case", ["empty", "not-image", "broken", "one-class", "blend-new"])
def test_bad_shot_folders_are_one_line_exit_2(toy, tmp_path, case):
    root, _, bundle = toy
    shots = tmp_path / "shots"
    for c in ("arrow", "circle"):
        shutil.copytree(root / "data" / "val" / "id" / c, shots / c)
    extra = []
    if case == "empty":
        (shots / "moon").mkdir()
        want = f"{shots / 'moon'}: empty class folder"
    elif case == "not-image":
        (shots / "arrow" / "notes.txt").write_text("x")
        want = f"{shots / 'arrow' / 'notes.txt'}: not an image file"
    elif case == "broken":
        (shots / "arrow" / "zz.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        want = str(shots / "arrow" / "zz.jpg")
    elif case == "one-class":
        shutil.rmtree(shots / "circle")
        want = "only one class folder"
    else:
        shutil.move(shots / "circle", shots / "ring")
        extra, want = ["--blend", "0.5"], "['ring'] are new to the bundle"
    r = CliRunner().invoke(main, ["adapt", str(bundle), "--shots", str(shots), "--out", str(tmp_path / "o"), *extra])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if not line.startswith("embedding ")]  # the progress line
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_fewshot_evaluation_pairs_clip_and_clap_on_the_same_shots():
    from clap_edge.core.probe import ProbeConfig
    from clap_edge.fewshot import FewShotConfig, draw_shots, evaluate_fewshot

    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 8))
    labels = {d: np.repeat(np.arange(3), 10) for d in ("a", "b", "c")}
    clean = {d: means[y] + 0.3 * rng.normal(size=(30, 8)) for d, y in labels.items()}
    noisy = {d: f + 3.0 * rng.normal(size=f.shape) for d, f in clean.items()}
    feats = {"clip": noisy, "clap": clean}
    config = FewShotConfig(shots=(1, 4), draws=2, probe=ProbeConfig(epochs=50), n_boot=200)
    res = evaluate_fewshot(feats, labels, feats, labels, 3, config)
    out = res.as_dict()
    assert list(out["domains"]) == ["a", "b", "c"] and list(out["domains"]["a"]) == ["1", "4"]
    for by_k in out["domains"].values():
        for cells in by_k.values():
            assert len(cells["clip"]["draws"]) == 2 and cells["clip"]["n"] == 30
            assert cells["clap"]["minus_clip"]["points"] == pytest.approx(cells["clap"]["top1"] - cells["clip"]["top1"],
                                                                          abs=0.02)
    assert all(out["domains"][d]["4"]["clap"]["minus_clip"]["ci95"][0] > 0 for d in "abc")  # clean features win
    # a domain's shots do not depend on which other domain is held out, and never include the held-out one
    ab = draw_shots(labels, ["a", "b"], 3, 4, 0, 0)
    ac = draw_shots(labels, ["a", "c"], 3, 4, 0, 0)
    assert [s for s in ab if s[0] == "a"] == [s for s in ac if s[0] == "a"] and not any(d == "c" for d, _ in ab)
    assert len(ab) == 3 * 2 * 4


def test_eval_cli_few_shot_table_plot_and_settings(toy, tmp_path):
    root, _, _ = toy
    r = CliRunner().invoke(main, ["eval", str(root / "data"), "--head", str(root / "head.safetensors"),
                                  "--prompts", "C", "--alphas", "0", "--alpha", "0.3", "--few-shot", "1,2",
                                  "--shot-draws", "2", "--out", str(tmp_path / "ev"), "--json"])
    assert r.exit_code == 0, r.output
    few = json.loads((tmp_path / "ev" / "eval.json").read_text())["few_shot"]
    assert few["settings"]["probe"]["lr"] == 0.005 and few["settings"]["probe"]["epochs"] == 1000
    assert few["settings"]["probe"]["batch_size"] == 32 and few["shot_split"] == "val" and few["alphas"] == {"clap": 0.3}
    assert set(few["domains"]) == set(DOMAINS) and set(few["mean"]) == {"1", "2"}
    for by_k in few["domains"].values():
        for cells in by_k.values():
            assert cells["clip"]["n"] == cells["clap"]["n"] == 6 * len(CLASSES)
            assert cells["clip"]["ci95"][0] <= cells["clip"]["top1"] <= cells["clip"]["ci95"][1]
    assert (tmp_path / "ev" / "eval-fewshot.png").stat().st_size > 0
    assert "| held-out domain | shots/class | clip | clap | clap - clip |" in (tmp_path / "ev" / "eval.md").read_text()
    bad = CliRunner().invoke(main, ["eval", str(root / "data"), "--model", "clap-edge-toy", "--few-shot", "1,x"])
    assert bad.exit_code == 2 and "--few-shot '1,x'" in bad.stderr



def test_adapt_in_place_and_output_choice(toy, tmp_path):
    from clap_edge.export.bundle import Bundle

    root, _, bundle = toy
    copy = shutil.copytree(bundle, tmp_path / "copy")
    shots = tmp_path / "shots"
    for c in ("moon", "star"):
        shutil.copytree(root / "data" / "val" / "id" / c, shots / c)
    r = CliRunner().invoke(main, ["adapt", str(copy), "--shots", str(shots), "--in-place", "--method", "prototype"])
    assert r.exit_code == 0, r.output
    assert "held-out check: 2 shots left out of the fit" in r.stdout
    with Bundle.open(copy) as b:
        assert list(b.class_names) == ["moon", "star"]
        assert b.manifest.classes.provenance["method"] == "prototype"
    both = CliRunner().invoke(main, ["adapt", str(copy), "--shots", str(shots), "--in-place", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2 and "either --out NEW or --in-place" in both.stderr
