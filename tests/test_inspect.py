"""`clap-edge export` and `clap-edge inspect` through the CLI (click's CliRunner)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from clap_edge.apps.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_inspect_summary_and_checks(runner, tiny_bundle):
    result = runner.invoke(main, ["inspect", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("clap-edge-tiny", "alpha 0.3", "cat, dog, bird, fish", "model.int8.onnx", "int8", "fp32"):
        assert text in out
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    agreement = manifest["parity"]["int8"]["top1_agreement_vs_fp32"]
    assert f"{agreement:.1%}" in out  # the int8 agreement is reported


def test_inspect_json(runner, tiny_bundle):
    result = runner.invoke(main, ["inspect", str(tiny_bundle), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"]["model_name"] == "clap-edge-tiny"
    assert summary["num_classes"] == 4 and summary["preprocess"]["size"] == [64, 64]
    assert set(summary["parity"]) == {"fp32", "int8"}
    assert "top1_agreement_vs_fp32" in summary["parity"]["int8"]
    assert summary["files"] and all(f["check"] == "ok" for f in summary["files"].values())


def test_inspect_names_a_tampered_file(runner, tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    (copy / "calibration.npy").unlink()
    result = runner.invoke(main, ["inspect", str(copy), "--json"])
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    bad = {name for name, f in summary["files"].items() if f["check"] != "ok"}
    assert bad == {"model.onnx", "calibration.npy"}
    assert "'model.onnx' is corrupt" in result.stderr and "missing file 'calibration.npy'" in result.stderr


def test_inspect_newer_schema(runner, tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(main, ["inspect", str(copy)])
    assert result.exit_code == 2 and "newer" in result.stderr


def test_export_cli_plain_clip(runner, tmp_path, caplog):
    templates = tmp_path / "templates.txt"
    templates.write_text("# ensemble\na photo of a {c}.\na drawing of a {c}.\n")
    images = _calibration_folder(tmp_path / "calib")
    out = tmp_path / "bundle"
    args = ["export", "--model", "clap-edge-tiny", "--classes", "cat,dog,car", "--no-head", "--out", str(out),
            "--templates", str(templates), "--no-torch-program", "--calibration", str(images), "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == {"model_name": "clap-edge-tiny", "pretrained": None, "head": None}
    assert summary["alpha"] == 0.0 and summary["class_names"] == ["cat", "dog", "car"]
    assert summary["templates"] == ["a photo of a {c}.", "a drawing of a {c}."]
    assert summary["variants"] == {"fp32": "model.onnx"}
    assert summary["parity"]["fp32"]["max_abs_logit_diff"] <= 1e-4
    assert "randomly initialised" in caplog.text  # no --pretrained: warned
    # the parity batch is the calibration folder's images through open_clip's eval transform
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    transform = image_transform_v2(PreprocessCfg(**{**summary["preprocess"], "size": (64, 64)}), is_train=False)
    expected = np.stack([transform(Image.open(p).convert("RGB")).numpy() for p in sorted(images.iterdir())])
    np.testing.assert_allclose(np.load(out / "calibration.npy"), expected, atol=1e-6)
    assert summary["parity"]["fp32"]["n_images"] == 3
    again = runner.invoke(main, args)  # exists, no --force
    assert again.exit_code == 2 and "already exists" in again.stderr


def _calibration_folder(folder):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(80, 60), (64, 64), (50, 120)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.mark.parametrize("args, message", [
    (["--no-head", "--model", "clap-edge-tiny", "--classes", "a"], None),  # ok arguments, checked below
    (["--model", "clap-edge-tiny", "--classes", "a"], "--head"),
    (["--no-head", "--classes", "a"], "--model"),
    (["--no-head", "--model", "clap-edge-tiny", "--classes", "a", "--alpha", "0.5"], "--alpha"),
])
def test_export_cli_argument_errors(runner, tmp_path, tiny_head_path, args, message):
    if message is None:
        args = ["--head", str(tiny_head_path)] + args
        message = "exclude"
    result = runner.invoke(main, ["export", "--out", str(tmp_path / "b")] + args)
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "b").exists()


def test_help_has_examples(runner):
    for command in ("export", "inspect"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output
