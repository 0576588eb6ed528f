"""`clap-edge classify`: JSON lines schema, folder walking, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clap_edge.apps.cli import main
from clap_edge.export.bundle import MANIFEST
from clap_edge.runtime.classifier import Classifier

CLASSES = {"cat", "dog", "car", "tree", "boat"}


def _run(*args):
    return CliRunner().invoke(main, ["classify", *map(str, args)])


def _lines(result):
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["b.jpg", "a.png", "sub/c.jpeg"]:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image, and not picked up by the folder walk")
    return root


def test_json_lines_schema_and_exit_0(runtime_bundle, photos):
    result = _run(runtime_bundle, photos, "--json", "--top-k", "3", "--batch-size", "2", "--threads", "1")
    assert result.exit_code == 0, result.output
    records = _lines(result)
    assert [r["path"] for r in records] == [str(photos / "a.png"), str(photos / "b.jpg"), str(photos / "sub/c.jpeg")]
    for r in records:
        assert set(r) == {"path", "labels", "scores"}
        assert len(r["labels"]) == 3 and set(r["labels"]) <= CLASSES
        assert all(isinstance(s, float) and 0 < s <= 1 for s in r["scores"])
        assert r["scores"] == sorted(r["scores"], reverse=True)


def test_top_k_larger_than_classes_is_clamped(runtime_bundle, photos):
    result = _run(runtime_bundle, photos / "a.png", "--json", "--top-k", "50")
    [record] = _lines(result)
    assert sorted(record["labels"]) == sorted(CLASSES)
    assert abs(sum(record["scores"]) - 1) < 1e-5


def test_broken_image_gives_exit_1_and_the_rest_are_reported(runtime_bundle, photos):
    (photos / "broken.jpg").write_bytes(b"")
    (photos / "text.jpg").write_text("hello")
    result = _run(runtime_bundle, photos, "--json", "--batch-size", "2")
    assert result.exit_code == 1
    records = {r["path"]: r for r in _lines(result)}
    assert len(records) == 5
    assert set(records[str(photos / "broken.jpg")]) == {"path", "error"}
    assert "empty file" in records[str(photos / "broken.jpg")]["error"]
    assert "not an image" in records[str(photos / "text.jpg")]["error"]
    assert all("labels" in records[str(photos / n)] for n in ["a.png", "b.jpg", "sub/c.jpeg"])
    assert "2 of 5 images could not be classified" in result.stderr


def test_plain_text_output(runtime_bundle, photos):
    result = _run(runtime_bundle, photos / "b.jpg", "--top-k", "2")
    assert result.exit_code == 0
    path, best = result.stdout.strip().split("\t")
    assert path == str(photos / "b.jpg")
    assert len(best.split(", ")) == 2


def _broken_bundle(runtime_bundle, tmp_path, how):
    bundle = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, bundle)
    if how == "missing":
        (bundle / "model.onnx").unlink()
    elif how == "flipped":
        data = bytearray((bundle / "model.onnx").read_bytes())
        data[1000] ^= 0x80
        (bundle / "model.onnx").write_bytes(bytes(data))
    elif how == "newer":
        manifest = json.loads((bundle / MANIFEST).read_text())
        manifest["schema_version"] = 42
        (bundle / MANIFEST).write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("how, message", [
    ("missing", "missing file 'model.onnx'"),
    ("flipped", "'model.onnx' is corrupt or was modified"),
    ("newer", "schema_version: 42 is newer"),
])
def test_bad_bundle_gives_exit_2_with_a_clear_message(runtime_bundle, photos, tmp_path, how, message):
    bundle = _broken_bundle(runtime_bundle, tmp_path, how)
    result = _run(bundle, photos, "--json", "--backend", "onnxruntime")
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["--top-k", "0"], ["--batch-size", "0"], ["--backend", "nope"]])
def test_bad_arguments_give_exit_2(runtime_bundle, photos, args):
    result = _run(runtime_bundle, photos, *args)
    assert result.exit_code == 2


def test_missing_path_is_one_error_line_and_empty_folder_gives_exit_2(runtime_bundle, tmp_path):
    result = _run(runtime_bundle, tmp_path / "nope.jpg")
    assert result.exit_code == 1 and f"{tmp_path / 'nope.jpg'}\terror: no such file or directory" in result.stderr
    (tmp_path / "empty").mkdir()
    result = _run(runtime_bundle, tmp_path / "empty")
    assert result.exit_code == 2 and "no image files found" in result.stderr


def test_help_ends_with_an_example():
    result = CliRunner().invoke(main, ["classify", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "clap-edge classify" in result.output.split("Example:")[1]


def _all_commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _all_commands(sub, (*path, name))


@pytest.mark.parametrize("path", [p for p, _ in _all_commands(main)], ids=lambda p: " ".join(p) or "main")
def test_every_help_ends_with_an_example(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    tail = result.output.rstrip().split("\n\n")[-1].strip().splitlines()
    # example lines are commands: ours, or the client / server a command's output is for (curl, tritonserver)
    commands = ("clap-edge", "--", "curl ", "tritonserver ")
    assert tail[0] == "Example:" and all(line.lstrip().startswith(commands) for line in tail[1:]), tail


def test_models_lists_ours_with_tags_and_the_unknown_model_hint_points_to_it():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    tags = json.loads(result.stdout)
    assert tags["clap-edge-toy"] == ["toyworld"] and tags["clap-edge-tiny"] == [] and "openai" in tags["ViT-B-32"]
    bad = CliRunner().invoke(main, ["train", "--model", "QQQQ", "--classes", "a,b", "--out", "h.safetensors"])
    assert bad.exit_code == 2 and "clap-edge models" in bad.stderr


@pytest.mark.parametrize("blocked, extra", [("torch", "train"), ("open_clip", "train"), ("openvino", "openvino")])
def test_a_missing_extra_is_one_line_and_exit_2(blocked, extra, monkeypatch):
    """A command whose library is absent names the extra that installs it (here: sys.modules blocks it)."""
    @main.command("needs-lib")
    def needs_lib():
        __import__(blocked)

    monkeypatch.setitem(sys.modules, blocked, None)
    try:
        result = CliRunner().invoke(main, ["needs-lib"])
    finally:
        main.commands.pop("needs-lib")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"[{extra}]" in lines[0] and f"pip install 'clap-edge[{extra}]'" in lines[0]
    assert "needs-lib" in lines[0] and blocked in lines[0]


def test_a_missing_module_no_extra_provides_is_not_disguised(monkeypatch):
    @main.command("needs-lib")
    def needs_lib():
        __import__("clap_edge_not_a_real_library")

    try:
        result = CliRunner().invoke(main, ["needs-lib"])
    finally:
        main.commands.pop("needs-lib")
    assert result.exit_code == 1 and isinstance(result.exception, ModuleNotFoundError)


def test_precision_option_runs_that_variant(runtime_bundle, tmp_path):
    """--backend onnxruntime --precision int8 runs model.int8.onnx (same answer as the int8 Classifier)."""
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(img)
    ok = CliRunner().invoke(main, ["classify", str(runtime_bundle), str(img), "--backend", "onnxruntime",
                                   "--precision", "int8", "--json", "--top-k", "5"])
    assert ok.exit_code == 0, ok.output
    with Classifier.open(runtime_bundle, backend="onnxruntime:int8") as clf:
        [want] = clf.predict([img], top_k=5)
    got = json.loads(ok.stdout.strip())
    assert got["labels"] == want.labels and got["scores"] == pytest.approx(want.scores, abs=1e-6)
    missing = CliRunner().invoke(main, ["classify", str(runtime_bundle), str(img), "--backend", "onnxruntime",
                                        "--precision", "fp16"])
    assert missing.exit_code == 2 and "'fp16' model" in missing.output
    auto = CliRunner().invoke(main, ["classify", str(runtime_bundle), str(img), "--precision", "int8"])
    assert auto.exit_code == 2 and "named --backend" in auto.output


def test_text_mode_escapes_control_characters_so_a_name_cannot_forge_a_record(runtime_bundle, tmp_path):
    # a file named "x.png\nforged.png\tcat 1.000" would print as two records, the second one invented
    forged = tmp_path / "x.png\nforged.png\tcat 1.000.png"
    Image.new("RGB", (40, 30), (90, 20, 200)).save(forged, format="PNG")
    (tmp_path / "bell\x07.png").write_bytes(b"")  # an error record names it on stderr, escaped too
    result = _run(runtime_bundle, tmp_path)
    assert result.exit_code == 1
    out = result.stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(str(tmp_path / "x.png\\nforged.png\\tcat 1.000.png") + "\t")
    assert len(out[0].split("\t")) == 2
    assert f"{tmp_path}/bell\\x07.png\terror: cannot decode image: empty file (0 bytes)" in result.stderr
    as_json = _run(runtime_bundle, tmp_path, "--json")  # JSON escapes by itself: the path comes back exact
    assert {record["path"] for record in _lines(as_json)} == {str(forged), str(tmp_path / "bell\x07.png")}


def test_escape_text_is_reversible_enough_to_be_unambiguous():
    from clap_edge.apps.cli.classify import escape_text

    assert escape_text("a\\nb") != escape_text("a\nb")  # a literal backslash-n is not a newline
    assert escape_text("tab\there\r\x1b[31m\x7f\x85\u2028ok é") == "tab\\there\\r\\x1b[31m\\x7f\\x85\\u2028ok é"
    assert escape_text("bad\udcffbyte") == "bad\\xffbyte"  # a non-UTF-8 file-name byte (surrogateescape)
