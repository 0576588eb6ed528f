"""Static int8 (QDQ), OpenVINO int8 (NNCF), drift per variant, auto's agreement floor, the GEMM ceiling.

Quantised variants are checked on the *trained* toy CLIP (``clap-edge-toy`` / ``toyworld``, shipped in the
package), not on random weights: a random model's logits are nearly tied, so which class wins after
quantisation depends on the CPU's int8 kernels (VNNI / AMX / AVX2 round differently), and a floor on it
fails on some CPUs. On the trained model:

- ``AGREEMENT_FLOOR`` (``runtime.bench_record.INT8_AGREEMENT_FLOOR``, 0.995): the one int8 floor. ``auto`` never
  picks a variant whose drift (top-1 agreement with fp32, worst domain) is below it; tested here with the floor
  itself, as the README states it.
- ``SANITY_FLOOR``: argmax agreement with fp32 over the 96 test images (8 classes x 2 domains x 6) that a
  correctly built variant reaches on every CPU (see its comment); not the target.
- ``TOP1_MARGIN``: a variant's top-1 (vs the labels) may trail fp32's by at most this much.

The bundle is exported with the accuracy control on (the default; export/builders/int8_control.py), which keeps
the costliest GEMMs float until validation agreement holds. Measured (2026-12, Intel Xeon with AVX-512 VNNI + AMX,
bench/results/int8_per_cpu*.json, 800 test images per seed, seeds 5 and 23): plain int8 97.4-99.6%, with the
control 99.4-100% but with most GEMMs float and no speed gain left, so auto keeps fp32 for the toy bundles.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from clap_edge.export.bundle import Bundle
from clap_edge.toyworld.world import CLASSES

DOMAINS = ("id", "both")
PER_CLASS = 6  # test images per class and domain: 96 in all
from clap_edge.runtime.bench_record import INT8_AGREEMENT_FLOOR as AGREEMENT_FLOOR  # the one floor (auto, README)

# Not the int8 target (that is AGREEMENT_FLOOR, which auto enforces from the export's drift): a bug detector that
# holds on every CPU. Measured (bench/results/int8_per_cpu.json, 96 images): 0.948-1.0 on AMX, and on AVX2-only CPUs
# reports down to 0.79 before the AVX2 remedies; a broken quantiser (wrong scale, swapped weights) scores ~1/8.
SANITY_FLOOR = 0.75
TOP1_MARGIN = 0.06  # worst measured drop: 0.010 (openvino:int8)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """A small toy-world dataset: {val,test}/{id,both}/<8 classes>/*.png, PER_CLASS images per class."""
    from clap_edge.toyworld.dataset import write_dataset

    root = tmp_path_factory.mktemp("int8-data") / "toy"
    write_dataset(root, domains=DOMAINS, per_class=PER_CLASS, seed=5)
    return root


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, toy_data):
    """The trained toy CLIP (clap-edge-toy/toyworld, no head) with the dynamic, static QDQ and OpenVINO int8
    variants, drift scored."""
    import torch

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("int8") / "bundle"
    return export_bundle(ExportConfig(out=out, model_name="clap-edge-toy", pretrained="toyworld", classes=list(CLASSES), int8=True,
                                      int8_static=True, openvino_int8=True, torch_program=False,
                                      calibration=toy_data / "val", calibration_count=16, eval=toy_data))


def _test_images(toy_data):
    """(domain, path, label) for the test split, read with open_clip's own torch transform (independent of
    the runtime's numpy preprocessing the exporter used)."""
    from clap_edge.core.datasets import scan_domains

    _, domains = scan_domains(toy_data / "test", list(CLASSES))
    return {d: (images.paths, np.asarray(images.labels)) for d, images in domains.items()}


def _open_clip_batch(paths, bundle):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    pre = bundle.preprocess
    cfg = PreprocessCfg(size=tuple(pre.size), mean=tuple(pre.mean), std=tuple(pre.std),
                        interpolation=pre.interpolation, resize_mode=pre.resize_mode)
    transform = image_transform_v2(cfg, is_train=False)
    return np.stack([transform(Image.open(p).convert("RGB")).numpy() for p in paths]).astype(np.float32)


def _logits(bundle, spec, batch, precision=None):
    from clap_edge.runtime.backends import RunnerOptions, create_runner

    with create_runner(bundle, spec, RunnerOptions(threads=1, precision=precision)) as runner:
        return runner.infer(batch).logits, runner


@pytest.mark.slow  # builds the int8 bundle (~60 s on 2 shared cores, with the accuracy control)
def test_qdq_variant_is_static_int8_with_float_layernorm_and_logits(int8_bundle):
    import onnx

    bundle = Bundle.open(int8_bundle)
    assert bundle.variants["qdq"] == "model.qdq.onnx"
    graph = onnx.load(str(bundle.variant_file("qdq"))).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert "DynamicQuantizeLinear" not in ops  # static: ranges fixed at export, not per call
    producer = {o: n for n in graph.node for o in n.output}
    # weight GEMMs read dequantised weights; LayerNorm / Softmax do not (the logits product is not in the graph)
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)
    assert [o.name for o in graph.output] == ["embedding"]
    quantised_gemms = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")
                       and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                               for i in n.input)]
    assert len(quantised_gemms) >= 4
    assert bundle.manifest.parity["qdq"]["calibration_images"] == 16


@pytest.mark.slow  # builds the int8 bundle (~60 s on 2 shared cores, with the accuracy control)
def test_qdq_runs_in_onnxruntime_and_agrees_with_fp32(int8_bundle, toy_data):
    bundle = Bundle.open(int8_bundle)
    images = _test_images(toy_data)
    batch = _open_clip_batch([p for paths, _ in images.values() for p in paths], bundle)
    fp32, _ = _logits(bundle, "onnxruntime", batch)
    qdq, runner = _logits(bundle, "onnxruntime", batch, precision="int8-static")
    assert runner.variant == "qdq" and runner.precision == "int8-static"
    assert qdq.shape == fp32.shape and np.isfinite(qdq).all()
    assert not np.array_equal(qdq, fp32)  # it really is another model
    _assert_quantised_floors(qdq, fp32, np.concatenate([labels for _, labels in images.values()]))
    spread = float(np.ptp(fp32, axis=1).mean())
    assert float(np.abs(qdq - fp32).max()) < spread  # quantisation noise, not a different function


@pytest.mark.slow  # builds the int8 bundle (~60 s on 2 shared cores, with the accuracy control)
def test_openvino_int8_variant_runs_at_precision_int8(int8_bundle, toy_data):
    pytest.importorskip("openvino")
    import openvino as ov

    bundle = Bundle.open(int8_bundle)
    assert bundle.variants["openvino-int8"] == "model.int8.xml" and "model.int8.bin" in bundle.file_names
    ops = [op.get_type_name() for op in ov.Core().read_model(str(bundle.variant_file("openvino-int8"))).get_ops()]
    assert ops.count("FakeQuantize") >= 4  # NNCF's int8 quantisers
    images = _test_images(toy_data)
    batch = _open_clip_batch([p for paths, _ in images.values() for p in paths], bundle)
    fp32, _ = _logits(bundle, "onnxruntime", batch)
    int8, runner = _logits(bundle, "openvino:int8", batch)
    assert runner.variant == "openvino-int8" and runner.precision == "int8"
    assert np.isfinite(int8).all() and not np.array_equal(int8, fp32)
    _assert_quantised_floors(int8, fp32, np.concatenate([labels for _, labels in images.values()]))


def _assert_quantised_floors(quantised, fp32, labels):
    """Agreement with fp32 and top-1 against the labels on the trained toy model (floors: module docstring)."""
    assert len(labels) == len(fp32) == len(DOMAINS) * len(CLASSES) * PER_CLASS
    agreement = float(np.mean(quantised.argmax(1) == fp32.argmax(1)))
    top1, fp32_top1 = float(np.mean(quantised.argmax(1) == labels)), float(np.mean(fp32.argmax(1) == labels))
    assert fp32_top1 >= 0.5, fp32_top1  # the trained model (random weights score ~1/8): the floors mean something
    assert agreement >= SANITY_FLOOR, agreement
    assert top1 >= fp32_top1 - TOP1_MARGIN, (top1, fp32_top1)


@pytest.mark.slow  # builds the int8 bundle (~60 s on 2 shared cores, with the accuracy control)
def test_openvino_int8_weights_are_checked(int8_bundle, tmp_path):
    pytest.importorskip("openvino")
    from clap_edge.core.errors import BundleError
    from clap_edge.runtime.backends import RunnerOptions, create_runner

    copy = tmp_path / "b"
    shutil.copytree(int8_bundle, copy)
    data = bytearray((copy / "model.int8.bin").read_bytes())
    data[100] ^= 0xFF
    (copy / "model.int8.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.int8.bin"):
        create_runner(Bundle.open(copy), "openvino", RunnerOptions(precision="int8")).activate()


@pytest.mark.slow  # builds the int8 bundle (~60 s on 2 shared cores, with the accuracy control)
def test_drift_in_manifest_equals_an_independent_recount(int8_bundle, toy_data):
    """The per-domain bookkeeping, recounted here. Logits come from the library settings the exporter
    used (default threads and hints): on the trained model a few images are near-ties whose argmax
    differs between thread counts and kernels, which the floors above allow for and this test must not."""
    from clap_edge.core.images import load_image
    from clap_edge.core.preprocess import Preprocessor
    from clap_edge.export.builders.drift import onnx_predictor, openvino_predictor

    bundle = Bundle.open(int8_bundle)
    drift = bundle.manifest.drift
    assert set(drift) == {"int8", "qdq", "openvino-int8"}
    pre = Preprocessor(bundle.preprocess)
    from clap_edge.export.bundle import ClassMatrix

    classes = ClassMatrix.from_bundle(bundle)
    reference = onnx_predictor(bundle.variant_file("fp32"), classes)
    predictors = {"int8": onnx_predictor(bundle.variant_file("int8"), classes),
                  "qdq": onnx_predictor(bundle.variant_file("qdq"), classes),
                  "openvino-int8": openvino_predictor(bundle.variant_file("openvino-int8"), classes)}
    total = {v: [0, 0] for v in predictors}
    for domain, (paths, labels) in _test_images(toy_data).items():
        batch = np.stack([pre(load_image(p)) for p in paths])
        ref = _argmax_in_chunks(reference, batch)
        for variant, predict in predictors.items():
            pred = _argmax_in_chunks(predict, batch)
            cell = drift[variant]["domains"][domain]
            assert cell["n_images"] == len(labels) == len(CLASSES) * PER_CLASS
            assert cell["agreement"] == pytest.approx(sum(int(a == b) for a, b in zip(pred, ref)) / len(labels), abs=1e-6)
            assert cell["top1"] == pytest.approx(sum(int(a == b) for a, b in zip(pred, labels)) / len(labels), abs=1e-6)
            assert cell["fp32_top1"] == pytest.approx(sum(int(a == b) for a, b in zip(ref, labels)) / len(labels),
                                                      abs=1e-6)
            total[variant][0] += sum(int(a == b) for a, b in zip(pred, ref))
            total[variant][1] += len(labels)
    for variant, (agree, n) in total.items():
        assert drift[variant]["n_images"] == n
        assert drift[variant]["agreement"] == pytest.approx(agree / n, abs=1e-6)
        assert drift[variant]["min_domain_agreement"] == min(d["agreement"] for d in drift[variant]["domains"].values())


def _argmax_in_chunks(predict, batch):
    """As the exporter scores: chunks of drift.BATCH images (OpenVINO's kernels may differ with batch size)."""
    from clap_edge.export.builders.drift import BATCH

    return np.concatenate([predict(batch[i:i + BATCH]).argmax(1) for i in range(0, len(batch), BATCH)])


def _with_drift_and_record(src, dst, agreement: float, speed: float = 2.0, path: str | None = None):
    """A copy of ``src`` whose manifest records ``agreement`` for int8, the export's speed vs fp32 on int8 path
    ``path`` (default: this CPU's), and whose bench.json (this CPU) says int8 is fastest."""
    from clap_edge.export.bundle.writer import write_manifest
    from clap_edge.core.machine import cpu_info, int8_path

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["drift"] = {"int8": {"agreement": 0.999, "min_domain_agreement": agreement}}
    manifest["parity"]["int8"].update(int8_path=path or int8_path(), speed_vs_fp32=speed)
    write_manifest(dst, manifest)  # re-export's writer: the manifest digest follows the edit
    rows = [{"backend": b, "mode": "model", "batch_size": 1, "images_per_s": ips, "top1_agreement_vs_fp32": 1.0}
            for b, ips in (("onnxruntime", 100.0), ("onnxruntime:int8", 500.0))]
    (dst / "bench.json").write_text(json.dumps({"env": {"cpu_model": cpu_info()[0]}, "results": rows}))
    return Bundle.open(dst)


def test_auto_skips_a_variant_whose_recorded_agreement_is_below_the_int8_floor(runtime_bundle, tmp_path):
    from clap_edge.runtime.backends import choose_auto_backend, spec_variant

    assert AGREEMENT_FLOOR == 0.995
    assert spec_variant("onnxruntime:int8-static") == "qdq" and spec_variant("openvino:int8") == "openvino-int8"
    assert choose_auto_backend(_with_drift_and_record(runtime_bundle, tmp_path / "ok", 0.995)) == "onnxruntime:int8"
    assert choose_auto_backend(_with_drift_and_record(runtime_bundle, tmp_path / "bad", 0.994)) == "onnxruntime"


def test_auto_never_picks_int8_measured_slower_than_fp32_on_this_cpus_int8_path(runtime_bundle, tmp_path):
    from clap_edge.core.machine import INT8_PATHS, int8_path
    from clap_edge.runtime.backends import choose_auto_backend

    parity = Bundle.open(runtime_bundle).manifest.parity["int8"]  # the export measured and recorded it
    assert parity["int8_path"] == int8_path() and parity["speed_vs_fp32"] == pytest.approx(
        parity["cpu_ms_fp32"] / parity["cpu_ms"], rel=0.01) and "cpu_flags" in parity
    slow = _with_drift_and_record(runtime_bundle, tmp_path / "slow", 1.0, speed=0.8)
    assert choose_auto_backend(slow) == "onnxruntime"  # even though the bench record ranks int8 first
    # measured slower on another int8 path: says nothing here; this CPU's bench record decides
    other = next(p for p in INT8_PATHS if p != int8_path())
    assert choose_auto_backend(_with_drift_and_record(runtime_bundle, tmp_path / "other", 1.0, speed=0.8,
                                                      path=other)) == "onnxruntime:int8"
    (tmp_path / "other" / "bench.json").unlink()  # no measurement on this CPU: fp32
    assert choose_auto_backend(Bundle.open(tmp_path / "other")) == "onnxruntime"


def test_int8_path_from_flags_and_the_avx2_remedy(tmp_path, monkeypatch):
    """The path from /proc/cpuinfo-style flags; on the saturating AVX2 path the dynamic int8 weights use
    ORT's reduce_range (7-bit: |q| <= 64), elsewhere the full int8 range."""
    import onnx
    from onnx import numpy_helper

    from clap_edge.core.machine import int8_path
    from clap_edge.export.builders.variants import quantize_int8

    assert int8_path(["avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"]) == "amx"
    assert int8_path(["avx2", "fma", "avx_vnni"]) == "vnni" and int8_path(["avx2", "fma"]) == "avx2"
    assert int8_path(["asimd", "asimddp"]) == "arm-dot" and int8_path(["sse4_2"]) == "other"
    _one_gemm_model(tmp_path / "m.onnx", k=64, n=32)
    widest = {}
    for path in ("avx2", "vnni"):
        monkeypatch.setenv("CLAP_EDGE_INT8_PATH", path)
        quantize_int8(tmp_path / "m.onnx", tmp_path / f"{path}.onnx")
        init = onnx.load(str(tmp_path / f"{path}.onnx")).graph.initializer
        q = next(numpy_helper.to_array(i) for i in init if numpy_helper.to_array(i).dtype == np.int8
                 and numpy_helper.to_array(i).size == 64 * 32)
        widest[path] = int(np.abs(q.astype(int)).max())
    assert widest["avx2"] <= 64 and widest["vnni"] == 127


def test_static_int8_needs_calibration_images(tmp_path):
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    result = CliRunner().invoke(main, ["export", "--model", "clap-edge-tiny", "--classes", "a,b", "--no-head",
                                       "--out", str(tmp_path / "b"), "--int8-static"])
    assert result.exit_code == 2
    assert "--calibration" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow  # builds the int8 bundle (~60 s on 2 shared cores, with the accuracy control)
def test_inspect_prints_drift(int8_bundle):
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    result = CliRunner().invoke(main, ["inspect", str(int8_bundle), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["drift"]["qdq"]["domains"].keys() == set(DOMAINS)
    text = CliRunner().invoke(main, ["inspect", str(int8_bundle)], terminal_width=160).output
    assert "drift vs fp32" in text and "openvino-int8" in text


# ---- the GEMM ceiling ------------------------------------------------------------------


def test_ceiling_micro_benchmark_reports_sane_fields():
    from clap_edge.apps.ceiling import ISA_FLAGS, CeilingConfig, measure_ceilings

    out = measure_ceilings(CeilingConfig(threads=1, shape=(64, 128, 256), seconds=0.02, min_sample_cpu_s=0.02,
                                         libraries=("onnxruntime", "openvino")))
    assert out["shape"] == [64, 128, 256] and out["threads"] == 1
    assert set(out["cpu_flags"]) <= set(ISA_FLAGS)
    flags = open("/proc/cpuinfo").read().split() if __import__("os").path.exists("/proc/cpuinfo") else []
    assert ("avx2" in out["cpu_flags"]) == ("avx2" in flags)
    for key in ("onnxruntime:fp32", "onnxruntime:int8", "onnxruntime:int8-static"):
        row = out["ceilings"][key]
        # GFLOP/s is 2*M*K*N over the median time: check the arithmetic, not the speed
        assert row["gflops_per_s"] == pytest.approx(2 * 64 * 128 * 256 / (row["ms"] / 1e3) / 1e9, rel=0.01)
        assert 0 < row["gflops_per_s"] < 1e5 and row["iters"] >= 3
        assert row["cpu_s_per_sample"] >= 0.02 and 0 < row["gflops_per_cpu_s"] < 1e5  # each sample >= its CPU floor
    if importlib.util.find_spec("openvino"):
        assert {"openvino:fp32", "openvino:int8"} <= set(out["ceilings"]) | set(out["errors"])


def test_ceiling_keys_and_fractions():
    from clap_edge.apps.bench_rows import add_ceiling_fractions as _add_ceiling_fractions
    from clap_edge.apps.ceiling import ceiling_key

    assert ceiling_key("onnxruntime", "fp32") == "onnxruntime:fp32"
    assert ceiling_key("onnxruntime-int8", "int8") == "onnxruntime:int8"
    assert ceiling_key("onnxruntime:int8-static", "int8-static") == "onnxruntime:int8-static"
    assert ceiling_key("openvino", "bf16") == "openvino:bf16"  # 'auto' that compiled to bf16
    assert ceiling_key("openvino:int8", "int8") == "openvino:int8"
    assert ceiling_key("torch", "fp32") == "torch:fp32" and ceiling_key("onnxruntime:fp16", "fp16") is None
    rows = [{"backend": "onnxruntime", "precision": "fp32", "mode": "model", "gflops_per_s": 40.0},
            {"backend": "torch", "precision": "fp32", "mode": "model", "gflops_per_s": 10.0}]
    _add_ceiling_fractions(rows, {"ceilings": {"onnxruntime:fp32": {"gflops_per_s": 50.0}}})
    assert rows[0]["fraction_of_ceiling"] == 0.8 and rows[0]["ceiling_gflops_per_s"] == 50.0
    assert rows[1]["fraction_of_ceiling"] is None and rows[1]["ceiling"] is None


def test_bench_plot_shows_ceilings(tmp_path):
    from clap_edge.core.report import bench_markdown_table as markdown_table, plot_bench as plot_report

    rows = [{"backend": "onnxruntime", "precision": "fp32", "mode": "model", "batch_size": b, "threads": 1,
             "p50_ms": 10.0 * b, "p99_ms": 11.0 * b, "images_per_s": 100.0, "speedup_vs_torch": None,
             "gflops_per_s": 40.0, "peak_rss_mb": 50.0, "top1_agreement_vs_fp32": 1.0,
             "ceiling": "onnxruntime:fp32", "ceiling_gflops_per_s": 50.0, "fraction_of_ceiling": 0.8} for b in (1, 8)]
    report = {"env": {"bundle": {"model_name": "m"}, "cpu_model": "cpu", "threads": 1, "cpu_flags": ["avx2"],
                      "load_average_before": [1.0, 1, 1], "load_average_after": [2.0, 1, 1],
                      "ceiling": {"ceilings": {"onnxruntime:fp32": {"gflops_per_s": 50.0}}, "cpu_flags": ["avx2"]}},
              "results": rows}
    path = plot_report(report, tmp_path / "p.png")
    assert path.stat().st_size > 1000
    assert "| 50 | 80% |" in markdown_table(report)


def _one_gemm_model(path, k=32, n=16):
    """x[M,k] @ W -> Identity -> y: one inner weight GEMM (graph-output GEMMs are kept float by design)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="gemm"),
                               helper.make_node("Identity", ["h"], ["y"], name="out")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


@pytest.mark.parametrize("method", ["minmax", pytest.param("entropy", marks=pytest.mark.slow), "percentile"])
def test_calibration_methods_set_the_activation_range(tmp_path, method):
    """Heavy-tailed activations: min-max spans the outliers exactly; entropy and percentile clip them."""
    import onnx
    from onnx import numpy_helper

    from clap_edge.export.builders.variants import quantize_qdq

    _one_gemm_model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((4096, 32)).astype(np.float32)
    x[0, 0] = 40.0  # one outlier among 131,072 values (percentile clips the top 0.001% of |x|)
    quantize_qdq(tmp_path / "m.onnx", tmp_path / "q.onnx", x, method)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scale = float(init[q.input[1]])
    minmax_scale = (x.max() - x.min()) / 255  # uint8 activations, asymmetric
    if method == "minmax":
        assert scale == pytest.approx(minmax_scale, rel=1e-4)
    else:
        assert scale < 0.5 * minmax_scale  # the outliers no longer set the step


# ---- int8 accuracy control (export/builders/int8_control.py) ----------------------------------------------------


def test_expected_disagreement_crosses_every_images_margin_noise_with_every_margin():
    from clap_edge.export.builders.int8_control import Validation

    fp32 = np.array([[3.0, 1.0, 0.0], [0.0, 2.5, 2.0], [0.0, 0.0, 1.0]])  # margins 2.0, 0.5, 1.0
    noisy = fp32 + np.array([[0.0, 0.7, 0.0], [0.0, -0.2, 0.0], [0.0, 0.0, 0.0]])  # margins shrink 0.7, 0.2, 0.0
    val = Validation(np.zeros((3, 1)), fp32, max_drop=0.25)
    # by hand: a shrink of 0.7 crosses margin 0.5 (1 of 3 margins); 0.2 and 0.0 cross none -> 1 / 9
    assert val.expected_disagreement(noisy) == pytest.approx(1 / 9)
    assert val.agreement(noisy) == 1.0  # no image flips here, but the next near-tie would
    assert val.holds(noisy) == (True, {"val_agreement": 1.0, "val_expected_agreement": pytest.approx(8 / 9, abs=1e-6)})
    # a stricter target: every image still agrees, but the expected agreement (8/9) is below 95%: it does not hold
    assert not Validation(np.zeros((3, 1)), fp32, max_drop=0.05).holds(noisy)[0]
    flipped = fp32 + np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.6], [0.0, 0.0, 0.0]])  # image 1 now picks class 2
    assert val.agreement(flipped) == pytest.approx(2 / 3) and not val.holds(flipped)[0]


def test_control_keeps_the_costliest_layers_float_until_the_target_holds(tmp_path):
    """A stand-in quantiser whose error per layer is known: the control ranks by it and stops at the first step
    that holds (1, 2, 3, 4, 6, ... layers in float)."""
    from clap_edge.export.builders.int8_control import Validation, control_onnx

    rng = np.random.default_rng(0)
    fp32 = rng.standard_normal((400, 8)) * 3
    cost = {"a": 0.001, "b": 2.0, "c": 0.002, "d": 1.5, "e": 0.003}  # logit noise each quantised layer adds
    noise = rng.standard_normal((400, 8))
    models: dict[str, list[str]] = {}

    def quantise(kept, dst):
        models[str(dst)] = list(kept)
        return dst

    def logits(path, images):
        quantised = [n for n in cost if n not in models[str(path)]]
        return fp32[:len(images)] + noise[:len(images)] * sum(cost[n] for n in quantised)

    val = Validation(np.zeros((400, 1)), fp32, max_drop=0.01)
    path, record = control_onnx(quantise, list(cost), logits, val, tmp_path / "q.onnx", tmp_path)
    assert record["float_nodes"] == ["b", "d"]  # the two costly ones, most costly first; the cheap ones stay int8
    assert record["val_agreement"] >= 0.99 and record["val_expected_agreement"] >= 0.99
    assert record["val_agreement_all_int8"] < 0.99 and record["quantisable_nodes"] == 5
    assert models[str(path)] == ["b", "d"]
    # already within the target: nothing kept in float, the quantiser runs once
    models.clear()
    only_a = control_onnx(lambda kept, dst: quantise(["b", "c", "d", "e", *kept], dst), ["a"], logits, val,
                          tmp_path / "q2.onnx", tmp_path)
    assert only_a[1]["float_nodes"] == [] and only_a[1]["val_agreement"] == 1.0
    assert len(models) == 1


def test_dynamic_int8_keeps_a_gemm_in_float_despite_orts_gemm_rewrite(tmp_path):
    """ORT rewrites a Gemm as <name>_MatMul + <name>_Add before quantising: a float Gemm must stay float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from clap_edge.export.builders.variants import quantize_int8

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(2):
        inits += [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"], name=f"gemm{i}"))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 16])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    for kept, quantised in (([], 2), (["gemm0"], 1), (["gemm0", "gemm1"], 0)):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", float_nodes=kept)
        ops = [n for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.op_type == "MatMulInteger"]
        assert len(ops) == quantised and not any(n.name.startswith(tuple(kept)) for n in ops if kept)


@pytest.mark.slow  # builds the int8 bundle (~60 s on 2 shared cores)
def test_accuracy_control_record_matches_the_variant_files(int8_bundle, toy_data):
    """Each int8 variant's record: the validation images are the calibration folder's (never the test split), the
    recorded validation agreement is recounted here from the bundle's file, and the GEMMs it lists as float are
    float in that file while the others are quantised."""
    import onnx

    from clap_edge.export.builders.calibration import calibration_images
    from clap_edge.export.builders.drift import BATCH, predictor_for
    from clap_edge.export.bundle import ClassMatrix

    bundle = Bundle.open(int8_bundle)
    classes = ClassMatrix.from_bundle(bundle)
    val = calibration_images(toy_data / "val", bundle.preprocess, 512)
    assert len(val) == len(CLASSES) * len(DOMAINS) * PER_CLASS

    def top1(path):
        predict = predictor_for(path, classes)
        return np.concatenate([predict(val[i:i + BATCH]).argmax(1) for i in range(0, len(val), BATCH)])

    reference = top1(bundle.variant_file("fp32"))
    for variant in ("int8", "qdq", "openvino-int8"):
        record = bundle.manifest.parity[variant]["accuracy_control"]
        assert record["val_images"] == len(val) and record["max_drop"] == 0.0025
        assert record["val_agreement"] == pytest.approx(np.mean(top1(bundle.variant_file(variant)) == reference),
                                                        abs=1e-6)
        assert record["val_agreement"] >= SANITY_FLOOR  # a layer reverted wrongly (e.g. under SmoothQuant) scores ~1/8
        held = min(record["val_agreement"], record["val_expected_agreement"]) >= 1 - record["max_drop"]
        assert held or len(record["float_nodes"]) == record["quantisable_nodes"]
    for variant, quantised_op in (("int8", "MatMulInteger"), ("qdq", "DequantizeLinear")):
        record = bundle.manifest.parity[variant]["accuracy_control"]
        graph = onnx.load(str(bundle.variant_file(variant))).graph
        producer = {o: n for n in graph.node for o in n.output}
        if variant == "qdq":  # a quantised GEMM reads a dequantised weight
            quantised = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                         and any(producer.get(i) is not None and producer[i].op_type == quantised_op for i in n.input)}
        else:  # ORT names the integer GEMM <node>_quant (<node>_MatMul_quant for a Gemm)
            quantised = {n.name.removesuffix("_quant").removesuffix("_MatMul") for n in graph.node
                         if n.op_type == quantised_op}
        assert not quantised & set(record["float_nodes"])
        assert len(quantised) == record["quantisable_nodes"] - len(record["float_nodes"])


def test_static_int8_with_every_gemm_kept_float_quantises_nothing(tmp_path):
    """ORT reads an empty nodes_to_quantize as 'all nodes': the control's last step (all float) must stay float."""
    import onnx

    from clap_edge.export.builders.variants import quantize_qdq

    _one_gemm_model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    for kept, quantise_ops in (([], 2), (["gemm"], 0)):  # x and the weight, or nothing
        quantize_qdq(tmp_path / "m.onnx", tmp_path / "q.onnx", x, float_nodes=kept)
        ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
        assert ops.count("QuantizeLinear") + ops.count("DequantizeLinear") >= quantise_ops
        assert bool(quantise_ops) == ("DequantizeLinear" in ops)


def test_one_max_drop_default_for_the_cli_and_the_exporter():
    from clap_edge.apps.cli.export import export
    from clap_edge.export.builders.exporter import ExportConfig
    from clap_edge.export.builders.int8_control import DEFAULT_MAX_DROP

    option = next(p for p in export.params if p.name == "int8_max_drop")
    assert option.default == DEFAULT_MAX_DROP == ExportConfig.int8_max_drop == pytest.approx((1 - AGREEMENT_FLOOR) / 2)


def test_export_cli_runs_the_accuracy_control_unless_told_not_to(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from clap_edge.apps.cli import main

    images = tmp_path / "val"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    records = {}
    for name, extra in (("drop", ["--int8-max-drop", "0.5"]), ("off", ["--no-int8-control"])):  # default: see above
        result = CliRunner().invoke(main, ["export", "--model", "clap-edge-tiny", "--no-head", "--classes", "a,b,c",
                                           "--out", str(tmp_path / name), "--int8", "--calibration", str(images),
                                           "--no-torch-program", *extra])
        assert result.exit_code == 0, result.output
        records[name] = Bundle.open(tmp_path / name).manifest.parity["int8"]["accuracy_control"]
    assert records["drop"]["max_drop"] == 0.5 and records["drop"]["val_images"] == 8 and records["off"] is None
