"""clap-edge bench: a real (tiny) run with two backends, the report's fields, the outputs, auto's record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clap_edge.core.errors import BackendUnavailableError
from clap_edge.export.bundle import Bundle
from clap_edge.apps.bench import BenchConfig, load_bench_record, record_bench, recorded_fastest_backend, run_bench
from clap_edge.apps.bench_rows import add_ratios as _add_ratios
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
                      iters=4, end_to_end=str(image_dir), ceiling_sample_cpu_s=0.05)
    return run_bench(cfg)


def test_report_has_every_backend_and_batch_with_sane_fields(report, runtime_bundle):
    manifest = Bundle.open(runtime_bundle).manifest
    model_rows = [r for r in report["results"] if r["mode"] == "model"]
    assert sorted((r["backend"], r["batch_size"]) for r in model_rows) == sorted(
        (b, n) for b in BACKENDS for n in BATCHES)
    for r in model_rows:
        assert r["threads"] == 1 and r["iters"] == 4
        assert r["p50_ms"] > 0 and r["p90_ms"] is None and r["p99_ms"] is None  # 4 calls: no tail figures
        assert r["tail_reported"] is False and 0 < r["cpu_p50_ms"] and r["images_per_cpu_s"] > 0
        assert r["load_1min"][0] <= r["load_1min"][1]
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
            "--iters", "2", "--warmup", "0", "--agreement-images", str(image_dir), "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"), "--quiet",
            "--no-ceiling"]
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
                                       "--quiet", "--no-ceiling"])
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

    def __init__(self, times, e2e=None, cpu_fraction=0.5):
        self.times, self.e2e, self.info = list(times), e2e, {"precision": "fp32"}
        self.cpu_fraction = cpu_fraction  # each call's CPU time as a fraction of its wall time

    def call(self, command, *args):
        if command == "time":
            t = self.times.pop(0)
            return [(t, t * self.cpu_fraction)]
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
    # 4 batches of 8 images in 0.1 s; latencies 10, 20, 30, 40 ms; CPU half of each (a loaded machine)
    assert row["images_per_s"] == pytest.approx(320.0) and row["images_per_cpu_s"] == pytest.approx(640.0)
    assert (row["p50_ms"], row["mean_ms"], row["cpu_p50_ms"]) == (25.0, 25.0, 12.5)
    assert row["p90_ms"] is None and row["p99_ms"] is None and row["iters"] == 4  # < 50 calls: no tail
    assert row["cpu_per_wall"] == 0.5


def test_tail_percentiles_from_50_calls_and_time_budget_rounds():
    from clap_edge.apps.bench import _bench_batch

    times = [9.0] + [0.001 * (i + 1) for i in range(50)]  # one warm-up, then 1..50 ms
    cfg = BenchConfig(bundle="x", threads=1, warmup=1, iters=50)
    [row] = _bench_batch({"onnxruntime": _FakeWorker(times)}, cfg, 1, lambda label: None, {})
    assert row["p90_ms"] == pytest.approx(np.percentile(np.arange(1, 51), 90))
    assert row["p99_ms"] == pytest.approx(np.percentile(np.arange(1, 51), 99)) and row["tail_reported"]
    # by time budget: a zero budget stops at min_iters, a long one at max_iters
    for budget, expected in ((0.0, 7), (1e9, 12)):
        cfg = BenchConfig(bundle="x", threads=1, warmup=0, budget_s=budget, min_iters=7, max_iters=12)
        [row] = _bench_batch({"onnxruntime": _FakeWorker([0.01] * 20)}, cfg, 1, lambda label: None, {})
        assert row["iters"] == expected


def test_fraction_above_one_is_flagged_as_noise_and_uses_the_cpu_clock():
    from clap_edge.apps.bench_rows import add_ceiling_fractions

    rows = [{"backend": "onnxruntime", "precision": "fp32", "mode": "model", "gflops_per_s": 30.0,
             "gflops_per_cpu_s": 60.0},
            {"backend": "onnxruntime-int8", "precision": "int8", "mode": "model", "gflops_per_s": 90.0,
             "gflops_per_cpu_s": 110.0}]
    ceiling = {"ceilings": {"onnxruntime:fp32": {"gflops_per_s": 40.0, "gflops_per_cpu_s": 80.0},
                            "onnxruntime:int8": {"gflops_per_s": 80.0, "gflops_per_cpu_s": 100.0}},
               "peak": {"fp32": {"gflops_per_cpu_s": 120.0}, "int8": {"gops_per_cpu_s": 440.0}}}
    add_ceiling_fractions(rows, ceiling)
    assert rows[0]["fraction_of_ceiling"] == 0.75 and rows[0]["fraction_clock"] == "cpu"  # 60/80, not 30/40
    assert rows[0]["fraction_of_peak"] == 0.5 and rows[0]["fraction_flag"] is None
    assert rows[1]["fraction_of_ceiling"] is None and rows[1]["fraction_of_ceiling_raw"] == 1.1
    assert "noise" in rows[1]["fraction_flag"] and rows[1]["fraction_of_peak"] == 0.25


def test_speedups_and_lead_use_cpu_time_against_open_clip_eager():
    from clap_edge.apps.bench_rows import lead_summary

    rows = [{"backend": b, "mode": "model", "batch_size": 1, "images_per_s": wall, "images_per_cpu_s": cpu}
            for b, wall, cpu in (("torch", 50.0, 10.0), ("peer:open_clip", 1.0, 8.0), ("onnxruntime", 1.0, 16.0),
                                 ("peer:onnxruntime", 99.0, 12.0))]
    assert _add_ratios(rows, flops_per_image=1e9).startswith("open_clip eager")
    assert [r["speedup_vs_torch"] for r in rows] == [1.25, 1.0, 2.0, 1.5]
    assert rows[2]["vs_best_peer"] == pytest.approx(16 / 12, abs=1e-3) and rows[2]["gflops_per_cpu_s"] == 16.0
    lead = lead_summary(rows)["1"]
    assert (lead["best_clap_edge"], lead["best_peer"], lead["ratio"]) == ("onnxruntime", "peer:onnxruntime", 1.333)


def test_end_to_end_fraction_by_hand():
    from clap_edge.apps.bench import _bench_end_to_end

    model_row = {"backend": "onnxruntime", "mode": "model", "batch_size": 4, "images_per_s": 240.0}
    worker = _FakeWorker([], e2e={"n_images": 60, "seconds": 0.5, "failed": 0})
    [row] = _bench_end_to_end({"onnxruntime": worker}, ["a.jpg"] * 30, 4, 1, [model_row], lambda label: None, {})
    assert (row["images_per_s"], row["model_only_images_per_s"], row["fraction_of_model_only"]) == (120.0, 240.0, 0.5)
def test_ceiling_is_sampled_interleaved_and_every_row_has_its_fraction(report):
    """(issue 10, 21) One GEMM sample of >= the CPU floor per ceiling per timed round; fraction = the row's
    GFLOP per CPU-second / its ceiling's (the same clock); the core's peak is probed beside it."""
    ceiling = report["env"]["ceiling"]
    assert ceiling["interleaved"] is True and len(ceiling["shape"]) == 3
    assert "fp32" in ceiling["peak"] or "error" in ceiling["peak"]
    model_rows = [r for r in report["results"] if r["mode"] == "model"]
    for r in model_rows:
        assert r["ceiling"] in ceiling["ceilings"], r
        peak = ceiling["ceilings"][r["ceiling"]]
        assert peak["iters"] == 4 * len(BATCHES)  # iters=4 timed rounds per batch size, one sample each
        assert peak["cpu_s_per_sample"] >= 0.05  # BenchConfig.ceiling_sample_cpu_s in the fixture
        m, k, n = ceiling["shape"]
        assert peak["gflops_per_s"] == pytest.approx(2 * m * k * n / (peak["ms"] / 1e3) / 1e9, rel=0.01)
        assert r["ceiling_gflops_per_s"] == peak["gflops_per_cpu_s"] and r["fraction_clock"] == "cpu"
        assert r["fraction_of_ceiling_raw"] == pytest.approx(r["gflops_per_cpu_s"] / peak["gflops_per_cpu_s"],
                                                             abs=1e-3)
        assert (r["fraction_of_ceiling"] is None) == (r["fraction_of_ceiling_raw"] > 1.0)


def test_peers_run_the_same_weights_and_open_clip_eager_is_the_baseline(runtime_bundle):
    """--peers: a bare ORT session gives ONNX Runtime's logits exactly; open_clip's own eager modules with the
    bundle's weights agree with the exported ONNX model (an independent implementation of the same network)."""
    cfg = BenchConfig(bundle=str(runtime_bundle), backends=["onnxruntime", "peer:onnxruntime", "peer:open_clip"],
                      batch_sizes=[2], threads=1, warmup=0, iters=2, ceiling=False)
    report = run_bench(cfg)
    assert "errors" not in report, report.get("errors")
    rows = {r["backend"]: r for r in report["results"]}
    assert rows["peer:onnxruntime"]["max_abs_logit_diff_vs_fp32"] == 0.0
    assert rows["peer:open_clip"]["top1_agreement_vs_fp32"] == 1.0
    assert rows["peer:open_clip"]["max_abs_logit_diff_vs_fp32"] < 1e-3
    assert report["env"]["speedup_baseline"].startswith("open_clip eager")
    assert rows["peer:open_clip"]["speedup_vs_torch"] == 1.0
    assert report["lead"]["2"]["best_clap_edge"] == "onnxruntime"


def test_model_gemm_ceiling_is_sampled_per_batch_and_gives_each_row_a_fraction(report):
    """(issue 21) The model's own products, built per batch size and sampled in the same rounds as the
    square GEMM; fraction = the row's images per CPU-second / the products-alone ones, same batch."""
    model_gemms = report["env"]["ceiling"]["model_gemms"]
    assert sorted(model_gemms) == sorted(str(b) for b in BATCHES)
    for r in (r for r in report["results"] if r["mode"] == "model"):
        at_batch = model_gemms[str(r["batch_size"])]
        assert at_batch["products"] > 0 and not at_batch["errors"], at_batch
        found = at_batch["ceilings"][r["ceiling"]]
        assert found["iters"] == 4  # one single-call sample per timed round
        assert r["model_gemms_images_per_cpu_s"] == found["images_per_cpu_s"] > 0
        # paired round by round: the median of per-round ratios, near the ratio of the whole-run rates
        assert r["fraction_of_model_gemms_raw"] == r["model_gemms_paired"] > 0
        whole_run = r["images_per_cpu_s"] / found["images_per_cpu_s"]
        assert 0.5 * whole_run < r["fraction_of_model_gemms_raw"] < 2 * whole_run
        assert (r["fraction_of_model_gemms"] is None) == (r["fraction_of_model_gemms_raw"] > 1.0)
    # a larger batch has proportionally more product work per call
    small, large = (model_gemms[str(b)]["flops_per_call"] for b in BATCHES)
    assert large == pytest.approx(small * BATCHES[1] / BATCHES[0], rel=1e-6)


def test_paired_model_gemm_fraction_by_hand():
    """Each round's model call pairs with the products sample taken after it: a machine that slows down
    2x halfway through (both sides alike) leaves every per-round ratio, and so the median, unchanged."""
    from clap_edge.apps.bench_ceiling import Ceilings

    handle = Ceilings()
    handle.key_of = {"onnxruntime": "onnxruntime:fp32"}
    # products: 2 calls per sample at 0.08 s CPU each, then everything 2x slower
    handle.model_batches = {4: {"samples": {"onnxruntime:fp32": [(2, 0.2, 0.16)] * 3 + [(2, 0.4, 0.32)] * 3}}}
    times = [(0.1, 0.1)] * 3 + [(0.2, 0.2)] * 3  # the model: 0.1 s CPU per call, then 0.2
    assert handle.paired_fraction("onnxruntime", 4, times) == 0.8  # 0.08 / 0.1 in every round
    assert handle.paired_fraction("onnxruntime", 4, times[:-1]) is None  # rounds do not pair up
    assert handle.paired_fraction("openvino", 4, times) is None  # no ceiling for this backend
