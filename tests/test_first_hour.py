"""A new user's first hour (issue 22): bad input fails before any work, in one line, exit 2, nothing written;
long steps report progress; piped tables keep whole names; the README's checksum and top_k statements hold.

Each "before any work" test replaces the expensive step (building a model, encoding images, writing the
dataset) with one that fails the test if it is reached: the order is what is tested, not the time.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clap_edge.apps.cli import main


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result, *needles) -> str:
    """Exit 2, no traceback, exactly one line on stderr (``error: ...``) holding every needle; nothing on stdout."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _forbid(monkeypatch, target: str, what: str) -> None:
    def reached(*args, **kwargs):
        raise AssertionError(f"{what} ran before the input was refused")

    monkeypatch.setattr(target, reached)


def _dataset(root: Path, classes: list[str], domains=("id", "both")) -> Path:
    for domain in domains:
        for name in classes:
            folder = root / "test" / domain / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(folder / "a.png")
    return root


# ---- model names and checkpoints: before open_clip is imported or a model built ---------------------------


def test_known_model_names_equal_open_clips_list():
    """The fast list (config files, no import) is the list open_clip itself gives, ours included."""
    import open_clip

    import clap_edge.models  # noqa: F401  registers clap-edge-tiny / clap-edge-toy with open_clip
    from clap_edge.apps.cli.checks import known_model_names

    assert known_model_names() == sorted(open_clip.list_models())


@pytest.mark.parametrize("command", [
    ["train", "--model", "ViT-B-99", "--classes", "a,b"],
    ["export", "--model", "ViT-B-99", "--no-head", "--classes", "a,b"],
])
def test_unknown_model_fails_before_a_model_is_built(command, tmp_path, monkeypatch):
    _forbid(monkeypatch, "open_clip.create_model", "building the model")
    out = tmp_path / "out" / "head.safetensors"
    line = one_line(_cli(*command, "--out", out), "unknown model 'ViT-B-99'", "ViT-B-32")
    assert "Did you mean" in line and not (tmp_path / "out").exists()


def test_missing_checkpoint_and_bad_out_fail_before_loading(tmp_path, monkeypatch):
    _forbid(monkeypatch, "open_clip.create_model", "building the model")
    one_line(_cli("train", "--model", "clap-edge-tiny", "--pretrained", tmp_path / "nope.safetensors",
                  "--classes", "a,b", "--out", tmp_path / "h.safetensors"), "checkpoint file not found", "nope")
    one_line(_cli("train", "--model", "clap-edge-tiny", "--classes", "a,b", "--out", tmp_path),
             "--out", "is a directory")
    (tmp_path / "file").write_text("x")
    one_line(_cli("train", "--model", "clap-edge-tiny", "--classes", "a,b", "--out", tmp_path / "file" / "h.st"),
             "is not a folder")
    one_line(_cli("train", "--model", "clap-edge-tiny", "--classes", " ", "--out", tmp_path / "h.safetensors"),
             "class list is empty")
    assert not (tmp_path / "h.safetensors").exists()


def test_export_to_an_existing_bundle_fails_before_loading(tmp_path, monkeypatch):
    _forbid(monkeypatch, "open_clip.create_model", "building the model")
    (tmp_path / "bundle").mkdir()
    one_line(_cli("export", "--model", "clap-edge-tiny", "--no-head", "--classes", "a,b", "--out",
                  tmp_path / "bundle"), "already exists", "--force")


def test_bench_output_paths_are_checked_before_timing(runtime_bundle, tmp_path, monkeypatch):
    _forbid(monkeypatch, "clap_edge.apps.bench.run_bench", "the benchmark")
    (tmp_path / "file").write_text("x")
    one_line(_cli("bench", runtime_bundle, "--json", tmp_path / "file" / "bench.json"), "--json", "not a folder")
    one_line(_cli("bench", runtime_bundle, "--plot", tmp_path), "--plot", "is a directory")


def test_usage_errors_are_one_line():
    one_line(_cli("classify", "/no/such/bundle", "x.jpg"), "'/no/such/bundle' does not exist",
             "clap-edge classify --help")
    one_line(_cli("train", "--model", "x"), "Missing option", "clap-edge train --help")
    one_line(_cli("toy", "dataset", "--no-such-flag"), "--no-such-flag", "clap-edge toy dataset --help")


# ---- eval: the bundle's classes against the dataset's, before an image is encoded --------------------------


def test_eval_bundle_with_other_classes_fails_before_encoding(runtime_bundle, tmp_path, monkeypatch):
    _forbid(monkeypatch, "clap_edge.apps.accuracy.score_bundle", "scoring the bundle")
    _forbid(monkeypatch, "clap_edge.zeroshot.encode_images", "encoding images")
    data = _dataset(tmp_path / "data", ["cat", "dog", "zebra"])  # the bundle has cat, dog, car, tree, boat
    line = one_line(_cli("eval", data, "--model", "clap-edge-tiny", "--bundle", f"b={runtime_bundle}",
                         "--out", tmp_path / "eval-out"), "zebra", "car")
    assert "dataset has classes the bundle does not" in line and "bundle has classes the dataset does not" in line
    assert not (tmp_path / "eval-out").exists()
    one_line(_cli("eval", data, "--model", "ViT-B-99"), "unknown model")


# ---- demo: the [train] extra before the 27 MB dataset ------------------------------------------------------


def test_demo_without_the_train_extra_writes_nothing(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    _forbid(monkeypatch, "clap_edge.toyworld.dataset.write_dataset", "writing the dataset")
    one_line(_cli("demo", "--out", tmp_path / "demo-out"), "[train] extra", "torch is not installed",
             "pip install 'clap-edge[train]'")
    assert not (tmp_path / "demo-out").exists()


def test_demo_summary_is_short_and_names_every_file(tmp_path):
    """The summary on stdout: the headline with CIs and every file written (other sections' PNGs included)."""
    from clap_edge.apps.demo_summary import OUTPUT_FILES, summary

    g = {"family": "PC", "alpha": 0.2, "clip_top1": 87.7, "clap_top1": 86.2, "points": -1.5, "ci95": [-4.2, 1.2],
         "domains": ["id"]}
    report = {"headline": {"style_isolating_domains": g, "id": g, "style_laden_prompts": {**g, "family": "S"}},
              "domains": {"id": {"clap-int8": {"agreement_vs_fp32": 97.5}, "clip-int8": {"agreement_vs_fp32": 100.0}}}}
    for name in [*OUTPUT_FILES, "fewshot.png"]:
        (tmp_path / name).write_text("x")
    (tmp_path / "data").mkdir()
    text = summary(report, tmp_path)
    assert len(text.splitlines()) <= 16 and max(map(len, text.splitlines())) <= 110
    for name in [*OUTPUT_FILES, "fewshot.png"]:
        assert name in text
    assert "-1.5 points [-4.2, +1.2]" in text and "97.5-100.0%" in text and "data" not in text.split("wrote")[1]


# ---- the README's statements --------------------------------------------------------------------------------


def test_checksums_are_checked_for_the_files_a_run_loads(runtime_bundle, tmp_path):
    """README: a file's sha256 is checked before that file is loaded; `inspect` checks every file. A flipped
    byte in a variant the run does not load does not stop it; loading that variant, or inspect, names it."""
    from clap_edge.core.errors import BundleError
    from clap_edge.runtime import Classifier

    bundle = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, bundle)
    data = bytearray((bundle / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.int8.onnx").write_bytes(bytes(data))
    image = np.zeros((16, 16, 3), np.uint8)
    with Classifier.open(bundle, backend="onnxruntime", threads=1) as clf:  # fp32: the int8 file is not loaded
        assert len(clf.predict([image], top_k=1)) == 1
    with pytest.raises(BundleError, match=r"model\.int8\.onnx.*(corrupt|modified)"):
        Classifier.open(bundle, backend="onnxruntime:int8", threads=1)
    result = _cli("inspect", bundle)
    assert result.exit_code == 2 and "model.int8.onnx" in result.stderr


def test_serve_top_k_above_the_class_count_returns_every_class(runtime_bundle):
    """README: top_k above the class count answers 200 with every class (as `classify --top-k` and
    Classifier.predict); a top_k that is not an integer >= 1 answers 400."""
    import asyncio

    from clap_edge.runtime import Classifier
    from clap_edge.runtime.scale.serve import ReplicaCore

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")

    async def read_body(limit):
        return buf.getvalue()

    with Classifier.open(runtime_bundle, backend="onnxruntime", threads=1) as clf:
        core = ReplicaCore(clf, max_batch_size=4, max_body_bytes=1 << 20)
        status, body = asyncio.run(core.respond("POST", "/v1/classify", {"top_k": "99"}, read_body))
        assert status == 200 and sorted(body["labels"]) == sorted(clf.class_names)
        assert body["labels"] == clf.predict([Image.open(io.BytesIO(buf.getvalue()))], top_k=99)[0].labels
        for bad in ("0", "-1", "two"):
            assert asyncio.run(core.respond("POST", "/v1/classify", {"top_k": bad}, read_body))[0] == 400


# ---- output: progress and piped tables ----------------------------------------------------------------------


def test_piped_tables_keep_long_names(runtime_bundle, tmp_path):
    """`inspect` piped (CliRunner's stdout is not a terminal): a 150-character file path is printed whole."""
    from clap_edge.apps.console import stdout_console

    console = stdout_console()
    assert console.width >= 1000
    from rich.table import Table

    table = Table()
    table.add_column("backend")
    name = "x" * 150
    table.add_row(name)
    with console.capture() as captured:
        console.print(table)
    assert name in captured.get()


def test_models_says_what_it_is_doing_before_the_slow_import():
    result = _cli("models", "--json")
    assert result.exit_code == 0
    assert result.stderr.startswith("reading open_clip's models")
    assert '"clap-edge-toy"' in result.stdout


# ---- plots and tables say what their numbers are -------------------------------------------------------------


def _captured_figure(monkeypatch):
    import clap_edge.core.report as report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or Path(path))
    return figures


def test_plots_label_their_uncertainty_and_tell_ceilings_apart(monkeypatch, tmp_path):
    from clap_edge.core.metrics import Top1
    from clap_edge.core.report import plot_alpha_curves, plot_bench, plot_table

    figures = _captured_figure(monkeypatch)
    plot_table({"id": {"clip": Top1(80.0, (75.0, 85.0), 100)}}, tmp_path / "t.png")
    cell = {"top1": 80.0, "ci95": [75.0, 85.0]}
    plot_alpha_curves({"PC": {"id": {0.0: cell, 0.5: cell}}}, tmp_path / "a.png", {"PC": 0.5})
    rows = [{"backend": b, "precision": p, "mode": "model", "batch_size": 1, "p50_ms": 1.0, "images_per_s": 1.0,
             "gflops_per_s": 1.0, "ceiling": f"{b}:{p}"} for b, p in (("onnxruntime", "fp32"), ("openvino", "fp32"))]
    env = {"bundle": {"model_name": "m"}, "cpu_model": "cpu", "threads": 1,
           "ceiling": {"ceilings": {"onnxruntime:fp32": {"gflops_per_s": 50.0}, "openvino:fp32": {"gflops_per_s": 50.0}}}}
    plot_bench({"env": env, "results": rows}, tmp_path / "b.png")
    table, alpha, bench = figures
    assert "95% CI" in table.axes[0].get_ylabel() and "95% CI" in alpha.axes[0].get_ylabel()
    assert any("95% CI" in t.get_text() for legend in alpha.legends for t in legend.get_texts())
    # two equal ceilings: each labelled with its name and value, drawn in different line styles
    lines = [ln for ln in bench.axes[2].get_lines() if ln.get_label().startswith("ceiling")]
    assert [ln.get_label() for ln in lines] == ["ceiling onnxruntime:fp32: 50 GFLOP/s", "ceiling openvino:fp32: 50 GFLOP/s"]
    assert lines[0].get_linestyle() != lines[1].get_linestyle()


def test_bench_table_says_why_a_ceiling_is_missing_and_what_agreement_counts():
    from clap_edge.apps.cli.bench import _caption, ceiling_reason

    row = {"backend": "torch", "precision": "fp16", "mode": "model", "ceiling_gflops_per_s": None,
           "agreement_n_images": 16, "agreement_reference": "onnxruntime"}
    assert ceiling_reason(row, {"ceiling": None}) == "not measured (--no-ceiling)"
    assert "no GEMM ceiling is measured for torch at fp16" in ceiling_reason(row, {"ceiling": {"ceilings": {}}})
    assert "failed: boom" in ceiling_reason(row, {"ceiling": {"error": "boom\nmore", "ceilings": {}}})
    assert ceiling_reason({**row, "ceiling_gflops_per_s": 5.0}, {}) is None
    caption = _caption({"env": {"ceiling": None}, "results": [row]})
    assert "of 16" in caption and "onnxruntime" in caption and "ceiling - for torch (fp16): not measured" in caption


def test_eval_orders_domains_as_the_demo():
    from clap_edge.toyworld.world import DOMAINS, in_world_order

    shuffled = {d: i for i, d in enumerate(["zeta", *sorted(DOMAINS), "alpha"])}
    assert list(in_world_order(shuffled)) == [*DOMAINS, "alpha", "zeta"]


def test_serve_drops_only_the_batch_size_advice():
    """Serve's advice to raise max_ongoing_requests (wrong for our merged batches) is dropped; other warnings stay."""
    import logging

    from clap_edge.runtime.scale.serve import _BatchAdvice

    def record(message):
        return logging.LogRecord("ray.serve", logging.WARNING, __file__, 1, message, None, None)

    advice = "`max_batch_size` (32) * `max_concurrent_batches` (1024) is larger than `max_ongoing_requests` (256)."
    assert not _BatchAdvice().filter(record(advice))
    assert _BatchAdvice().filter(record("Replica failed health check"))
