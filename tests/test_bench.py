"""clap-edge bench: a real (tiny) run with two backends, the report's fields, the outputs, auto's record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clap_edge.core.errors import BackendUnavailableError
from clap_edge.export.bundle import Bundle
from clap_edge.apps.bench import BenchConfig, _add_ratios, load_bench_record, record_bench, recorded_fastest_backend, run_bench
from clap_edge.core.report import plot_bench, write_json

BACKENDS = ["onnxruntime", "openvino"]
BATCHES = [1, 3]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 80, 3), dtype=np.uint8)).save(root / f"im{i}.jpg")
    return root


@pytest.fixture(scope="module")
def report(runtime_bundle, image_dir):
    cfg = BenchConfig(bundle=str(runtime_bundle), backends=BACKENDS, batch_sizes=BATCHES, threads=1, warmup=1,
                      iters=4, end_to_end=str(image_dir))
    return run_bench(cfg)


def test_report_has_every_backend_and_batch_with_sane_fields(report, runtime_bundle):
    manifest = Bundle.open(runtime_bundle).manifest
    model_rows = [r for r in report["results"] if r["mode"] == "model"]
    assert sorted((r["backend"], r["batch_size"]) for r in model_rows) == sorted(
        (b, n) for b in BACKENDS for n in BATCHES)
    for r in model_rows:
        assert r["threads"] == 1 and r["iters"] == 4
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        # (images/s and GFLOP/s from known times: test_rows_from_known_times, test_speedup_is_relative_...)
        assert r["gflops_per_s"] > 0 and manifest.flops_per_image > 0
        assert r["speedup_vs_torch"] is None  # torch was not benchmarked
        assert r["peak_rss_mb"] > 10
        assert r["precision"] in {"fp32", "bf16", "fp16"}
        assert r["agreement_reference"] == "onnxruntime" and r["agreement_n_images"] > 0
    ref = [r for r in model_rows if r["backend"] == "onnxruntime"]
    assert all(r["top1_agreement_vs_fp32"] == 1.0 and r["max_abs_logit_diff_vs_fp32"] == 0.0 for r in ref)
    assert "errors" not in report


def test_end_to_end_rows_classify_every_file(report):
    rows = [r for r in report["results"] if r["mode"] == "end_to_end"]
    assert sorted((r["backend"], r["batch_size"]) for r in rows) == sorted((b, n) for b in BACKENDS for n in BATCHES)
    for r in rows:
        assert r["failed"] == 0 and r["n_images"] >= 6 * r["batch_size"]
        assert r["images_per_s"] > 0 and r["model_only_images_per_s"] > 0 and r["fraction_of_model_only"] > 0


def test_env_block(report):
    env = report["env"]
    for key in ("cpu_model", "cpu_flags", "cores", "threads", "libraries", "gpu", "load_average_before", "bundle"):
        assert key in env
    assert env["threads"] == 1 and env["cores"] >= 1
    assert "onnxruntime" in env["libraries"] and "openvino" in env["libraries"]
    assert env["bundle"]["model_name"] == "clap-edge-tiny"


def test_json_and_png_outputs(report, tmp_path):
    path = write_json(tmp_path / "out" / "bench.json", report)
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    png = plot_bench(report, tmp_path / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_speedup_is_relative_to_torch_at_the_same_batch():
    rows = [{"backend": "torch", "mode": "model", "batch_size": 1, "images_per_s": 10.0},
            {"backend": "onnxruntime", "mode": "model", "batch_size": 1, "images_per_s": 15.0},
            {"backend": "torch", "mode": "model", "batch_size": 8, "images_per_s": 40.0},
            {"backend": "onnxruntime", "mode": "model", "batch_size": 8, "images_per_s": 20.0}]
    _add_ratios(rows, flops_per_image=2e9)
    assert [r["speedup_vs_torch"] for r in rows] == [1.0, 1.5, 1.0, 0.5]
    assert rows[1]["gflops_per_s"] == 30.0


def test_auto_uses_recorded_fastest_backend(runtime_bundle, report, monkeypatch, tmp_path):
    from clap_edge.runtime.backends import choose_auto_backend

    monkeypatch.setenv("CLAP_EDGE_CACHE", str(tmp_path / "cache"))
    bundle = Bundle.open(runtime_bundle)
    assert load_bench_record(bundle) is None
    assert choose_auto_backend(bundle) == "onnxruntime"  # static order without a record
    record_bench(report, bundle)
    assert load_bench_record(bundle)["results"] == json.loads(json.dumps(report["results"]))
    batch1 = [r for r in report["results"] if r["mode"] == "model" and r["batch_size"] == 1]
    fastest = max(batch1, key=lambda r: r["images_per_s"])["backend"]
    assert choose_auto_backend(bundle) == fastest
    # a backend that flips top-1s vs fp32 is never chosen, however fast
    edited = json.loads(json.dumps(report))
    for r in edited["results"]:
        if r["backend"] == "openvino":
            r["images_per_s"], r["top1_agreement_vs_fp32"] = 1e9, 0.5
    record_bench(edited, bundle)
    assert recorded_fastest_backend(bundle, BACKENDS) == "onnxruntime"
    # a record from another CPU does not count
    edited["env"]["cpu_model"] = "some other cpu"
    record_bench(edited, bundle)
    assert recorded_fastest_backend(bundle, BACKENDS) is None


def test_unknown_or_missing_backend_is_a_clear_error(runtime_bundle):
    with pytest.raises(BackendUnavailableError, match="unknown backend 'nope'"):
        run_bench(BenchConfig(bundle=str(runtime_bundle), backends=["nope"]))
    from clap_edge.apps.cli import main

    result = CliRunner().invoke(main, ["bench", str(runtime_bundle), "--backends", "nope", "--quiet"])
    assert result.exit_code == 2 and "unknown backend 'nope'" in result.output
    result = CliRunner().invoke(main, ["bench", str(runtime_bundle), "--batch-sizes", "0"])
    assert result.exit_code == 2


def test_cli_writes_json_and_plot(runtime_bundle, image_dir, tmp_path):
    from clap_edge.apps.cli import main

    args = ["bench", str(runtime_bundle), "--backends", "onnxruntime,onnxruntime-int8", "--batch-sizes", "2",
            "--iters", "2", "--warmup", "0", "--agreement-images", str(image_dir), "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    ort, int8 = data["results"]
    assert int8["backend"] == "onnxruntime-int8" and int8["precision"] == "int8" and int8["batch_size"] == 2
    assert ort["agreement_n_images"] == int8["agreement_n_images"] == 5  # the given folder, not calibration.npy
    assert ort["top1_agreement_vs_fp32"] == 1.0
    assert int8["top1_agreement_vs_fp32"] == pytest.approx(_agreement_by_hand(runtime_bundle, image_dir), abs=1e-6)
    assert (tmp_path / "b.png").stat().st_size > 0


def test_cli_exits_1_when_a_backend_fails_but_reports_the_others(runtime_bundle, tmp_path):
    import shutil

    from clap_edge.apps.cli import main

    bundle = tmp_path / "tampered"
    shutil.copytree(runtime_bundle, bundle)
    data = bytearray((bundle / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.int8.onnx").write_bytes(bytes(data))
    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", str(bundle), "--backends", "onnxruntime,onnxruntime-int8",
                                       "--batch-sizes", "1", "--iters", "2", "--warmup", "0", "--json", str(out),
                                       "--quiet"])
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["results"]] == ["onnxruntime"]
    assert "model.int8.onnx" in report["errors"]["onnxruntime-int8"]


def _agreement_by_hand(bundle_path, folder) -> float:
    """Top-1 agreement of model.int8.onnx with model.onnx on the folder's images, straight from onnxruntime."""
    import onnxruntime as ort

    from clap_edge.core.images import list_images
    from clap_edge.core.preprocess import Preprocessor

    bundle = Bundle.open(bundle_path)
    pre = Preprocessor(bundle.preprocess)
    batch = np.stack([pre(Image.open(p)) for p in list_images([folder])])
    w = bundle.class_embeddings()  # schema 4: logits = scale * embedding @ W.T (argmax needs no scale)
    logits = [ort.InferenceSession(str(bundle.root / name), providers=["CPUExecutionProvider"])
              .run(["embedding"], {"image": batch})[0] @ w.T for name in ("model.onnx", "model.int8.onnx")]
    return float(np.mean(logits[0].argmax(1) == logits[1].argmax(1)))


class _FakeWorker:
    """A bench worker whose inference times and end-to-end run are given: the row arithmetic by hand."""

    def __init__(self, times, e2e=None):
        self.times, self.e2e, self.info = list(times), e2e, {"precision": "fp32"}

    def call(self, command, *args):
        if command == "time":
            return [self.times.pop(0)]
        if command == "memory":
            return {"peak_rss_mb": 1.0, "peak_gpu_mb": None}
        if command == "end_to_end":
            return self.e2e
        return None


def test_rows_from_known_times():
    from clap_edge.apps.bench import _bench_batch

    cfg = BenchConfig(bundle="x", backends=["onnxruntime"], batch_sizes=[8], threads=1, warmup=1, iters=4)
    worker = _FakeWorker([9.0, 0.010, 0.030, 0.020, 0.040])  # the first (warm-up) is not recorded
    [row] = _bench_batch({"onnxruntime": worker}, cfg, 8, lambda label: None, {})
    # 4 batches of 8 images in 0.1 s; latencies 10, 20, 30, 40 ms
    assert row["images_per_s"] == pytest.approx(320.0)
    assert (row["p50_ms"], row["mean_ms"]) == (25.0, 25.0)
    assert row["p90_ms"] == pytest.approx(37.0) and row["p99_ms"] == pytest.approx(39.7)


def test_end_to_end_fraction_by_hand():
    from clap_edge.apps.bench import _bench_end_to_end

    model_row = {"backend": "onnxruntime", "mode": "model", "batch_size": 4, "images_per_s": 240.0}
    worker = _FakeWorker([], e2e={"n_images": 60, "seconds": 0.5, "failed": 0})
    [row] = _bench_end_to_end({"onnxruntime": worker}, ["a.jpg"] * 30, 4, 1, [model_row], lambda label: None, {})
    assert (row["images_per_s"], row["model_only_images_per_s"], row["fraction_of_model_only"]) == (120.0, 240.0, 0.5)
def test_ceiling_is_sampled_interleaved_and_every_row_has_its_fraction(report):
    """(issue 10) One GEMM sample per backend per timed round; fraction = the row's GFLOP/s / its ceiling."""
    ceiling = report["env"]["ceiling"]
    assert ceiling["interleaved"] is True and len(ceiling["shape"]) == 3
    model_rows = [r for r in report["results"] if r["mode"] == "model"]
    for r in model_rows:
        assert r["ceiling"] in ceiling["ceilings"], r
        peak = ceiling["ceilings"][r["ceiling"]]
        assert peak["iters"] == 4 * len(BATCHES)  # iters=4 timed rounds per batch size, one sample each
        m, k, n = ceiling["shape"]
        assert peak["gflops_per_s"] == pytest.approx(2 * m * k * n / (peak["ms"] / 1e3) / 1e9, rel=0.01)
        assert r["ceiling_gflops_per_s"] == peak["gflops_per_s"]
        assert r["fraction_of_ceiling"] == pytest.approx(r["gflops_per_s"] / peak["gflops_per_s"], abs=1e-3)
