"""Compiled engines without compiling (fast): sidecars, matching a machine, choosing among several engines,
refusing stale / tampered ones, batch chunking, TensorRT build plans, the missing-TensorRT exit, the
fp16 cast pass and the ORT TensorRT EP options. Engine files here are placeholder bytes: selection never
runs them. Real builds are in test_engines_build.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from clap_edge.core.errors import BackendUnavailableError, BundleError, ClapEdgeError
from clap_edge.export.builders.engines.tensorrt import fp32_layer_indices, plan_build
from clap_edge.export.bundle import Bundle, sha256_file
from clap_edge.export.bundle.engines import (DeviceInfo, EngineMismatchError, EngineSidecar, engine_basename,
                                              mismatch, parse_batch_profile, same_version, select_engine)
from clap_edge.export.bundle.writer import add_to_bundle, write_manifest
from clap_edge.runtime.backends.engines import plan_chunks, run_in_chunks

H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", compute_capability="9.0")
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", compute_capability="8.0")
ORIN = DeviceInfo("cuda", "Orin", compute_capability="8.7")
CPU512 = DeviceInfo("cpu", "Xeon", arch="x86_64", isa="avx512")
HOST_AVX2 = DeviceInfo("cpu", "Core", arch="x86_64", flags=("sse4_2", "avx2", "fma"))
HOST_AVX512 = DeviceInfo("cpu", "Xeon", arch="x86_64", flags=("avx2", "fma", "avx512f", "avx512dq", "avx512vl",
                                                                 "avx512bw"))


def sidecar(device: DeviceInfo, engine="tensorrt", precision="fp16", version="10.8.0", source="model.onnx",
            sha="0" * 64, batch=(1, 8, 64), engine_sha="1" * 64) -> EngineSidecar:
    ext = ".plan" if engine == "tensorrt" else ".pt2"
    return EngineSidecar(engine=engine, file=engine_basename(engine, device, precision, batch) + ext,
                         precision=precision, batch=batch, device=device,
                         library="tensorrt" if engine == "tensorrt" else "torch", library_version=version,
                         source_model=source, source_sha256=sha, engine_sha256=engine_sha,
                         built_utc="2026-01-01T00:00:00Z", build_seconds=1.0,
                         parity={"max_abs_logit_diff_vs_onnxruntime": 0.01})


def plan_bytes(device: DeviceInfo, precision: str) -> bytes:
    return f"plan for {device.name} {precision}".encode()


# ---- sidecars and matching -------------------------------------------------------------


def test_sidecar_json_round_trip_and_name():
    s = sidecar(H100)
    assert s.file == "engines/tensorrt-nvidia-h100-80gb-hbm3-sm90-fp16-b1-8-64.plan"
    back = EngineSidecar.from_json(json.loads(json.dumps(s.to_json())), "x.json")
    assert back == s


@pytest.mark.parametrize("batch", [[8, 4, 64], [0, 1, 2], [1, 2], [1, 2.5, 4], [True, 1, 1], "1,8,64"])
def test_sidecar_rejects_bad_batch_profile(batch):
    d = sidecar(H100).to_json() | {"batch": batch}
    with pytest.raises(BundleError, match=r"x.json: engine sidecar field batch must be"):
        EngineSidecar.from_json(d, "x.json")


def test_sidecar_without_engine_digest_is_refused_with_a_rebuild_hint():
    d = sidecar(H100).to_json()
    del d["engine_sha256"]  # a sidecar written before schema_version 3
    with pytest.raises(BundleError, match=r"^x.json: engine sidecar is missing fields \['engine_sha256'\]; rebuild "
                                          r"the engine with clap-edge build-engine$"):
        EngineSidecar.from_json(d, "x.json")


def test_parse_batch_profile():
    assert parse_batch_profile("1,8,64") == (1, 8, 64)
    assert parse_batch_profile("16") == (16, 16, 16)
    for bad in ("8,4,64", "0,1,2", "a,b,c", "1,2"):
        with pytest.raises(ValueError, match="MIN,OPT,MAX"):
            parse_batch_profile(bad)


def test_mismatch_reasons():
    assert mismatch(sidecar(H100), H100, "10.8.0") is None
    assert "compute capability 9.0" in mismatch(sidecar(H100), A100, "10.8.0")
    assert "10.8.0, this has 10.9.0" in mismatch(sidecar(H100), H100, "10.9.0")
    assert "built for cuda, this is cpu" == mismatch(sidecar(H100), HOST_AVX512, "10.8.0")
    h100_pcie = DeviceInfo("cuda", "NVIDIA H100 PCIe", compute_capability="9.0")
    assert "built on NVIDIA H100 80GB HBM3" in mismatch(sidecar(H100), h100_pcie, "10.8.0")
    cpu_engine = sidecar(CPU512, engine="aoti", version="2.5.0+cpu")
    assert mismatch(cpu_engine, HOST_AVX512, "2.5.0+cpu") is None
    assert "lacks avx512f, avx512dq, avx512vl, avx512bw" in mismatch(cpu_engine, HOST_AVX2, "2.5.0+cpu")
    assert "this CPU is aarch64" in mismatch(cpu_engine, DeviceInfo("cpu", "Cortex", arch="aarch64"), None)


def test_same_version_local_part():
    assert same_version("2.5.0+cu124", "2.5.0")  # package metadata has no local part: says nothing about it
    assert not same_version("2.5.0+cu124", "2.5.0+cpu")
    assert not same_version("2.5.0", "2.5.1")


# ---- selection in a bundle ----------------------------------------------------------------


@pytest.fixture()
def engine_bundle(runtime_bundle, tmp_path):
    """A copy of the tiny bundle with three placeholder TensorRT engines: fp16 for H100 and A100, int8 for H100."""
    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    sha = Bundle.open(root).manifest.sha256("model.onnx")
    entries, files = [], {}
    for device, precision in ((H100, "fp16"), (A100, "fp16"), (H100, "int8")):
        plan = plan_bytes(device, precision)
        s = sidecar(device, precision=precision, sha=sha, engine_sha=hashlib.sha256(plan).hexdigest())
        side = s.file.removesuffix(".plan") + ".json"
        files[s.file] = plan
        files[side] = json.dumps(s.to_json()).encode()
        entries.append(s.manifest_entry(side))
    add_to_bundle(root, files, engines=entries)
    return root


def test_select_picks_the_engine_built_for_this_gpu(engine_bundle):
    bundle = Bundle.open(engine_bundle)
    choice = select_engine(bundle, "tensorrt", "fp16", [A100], "10.8.0")
    assert choice.sidecar.device == A100
    assert choice.path.read_bytes() == b"plan for NVIDIA A100-SXM4-40GB fp16"
    assert select_engine(bundle, "tensorrt", "int8", [H100], "10.8.0").path.read_bytes() == b"plan for NVIDIA H100 80GB HBM3 int8"


def test_select_lists_what_it_found_when_nothing_fits(engine_bundle):
    bundle = Bundle.open(engine_bundle)
    with pytest.raises(EngineMismatchError) as e:
        select_engine(bundle, "tensorrt", "fp16", [ORIN], "10.8.0")
    message = str(e.value)
    assert "no tensorrt fp16 engine fits this machine (Orin (compute capability 8.7), tensorrt 10.8.0)" in message
    assert "tensorrt-nvidia-h100-80gb-hbm3-sm90-fp16-b1-8-64.plan (built for compute capability 9.0" in message
    assert "tensorrt-nvidia-a100-sxm4-40gb-sm80-fp16-b1-8-64.plan (built for compute capability 8.0" in message
    assert "int8, not fp16" in message
    with pytest.raises(EngineMismatchError, match="built with tensorrt 10.8.0, this has 10.9.1"):
        select_engine(bundle, "tensorrt", "fp16", [H100], "10.9.1")
    with pytest.raises(EngineMismatchError, match="no aoti engine in this bundle; build one with: clap-edge build-engine"):
        select_engine(bundle, "aoti", "fp32", [HOST_AVX512], "2.5.0")


def test_tampered_engine_is_refused(engine_bundle):
    bundle = Bundle.open(engine_bundle)
    name = sidecar(A100).file
    (engine_bundle / name).write_bytes(b"plan for NVIDIA A100-SXM4-40GB fp16 + a payload")
    with pytest.raises(BundleError, match=r"is corrupt or was modified: sha256|has \d+ bytes but the manifest lists"):
        select_engine(bundle, "tensorrt", "fp16", [A100], "10.8.0")


def test_tampered_sidecar_is_refused(engine_bundle):
    side = engine_bundle / (sidecar(A100).file.removesuffix(".plan") + ".json")
    d = json.loads(side.read_text())
    d["device"]["compute_capability"] = "8.7"  # claim to fit an Orin
    side.write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"tensorrt-nvidia-a100-sxm4-40gb-sm80-fp16-b1-8-64.json' is corrupt"):
        select_engine(Bundle.open(engine_bundle), "tensorrt", "fp16", [ORIN], "10.8.0")


def test_sidecar_disagreeing_with_manifest_is_refused(engine_bundle):
    manifest = json.loads((engine_bundle / "manifest.json").read_text())
    manifest["engines"][1]["precision"] = "int8"  # the A100 fp16 engine's entry now says int8
    write_manifest(engine_bundle, manifest)  # digest kept in step: this checks the sidecar, not the digest
    with pytest.raises(BundleError, match=r"sidecar says precision 'fp16', the manifest 'int8'"):
        select_engine(Bundle.open(engine_bundle), "tensorrt", "int8", [A100], "10.8.0")


@pytest.mark.parametrize("text, why", [(b"{not json", "Expecting property name"),
                                       (b'{"engine": NaN}', "NaN is not a finite number"),
                                       (b"\xff\xfe{}", "Expecting value"),
                                       (b"[" * 100_000 + b"]" * 100_000, "recursion")])
def test_unreadable_sidecar_is_one_line(engine_bundle, text, why):
    side = sidecar(A100).file.removesuffix(".plan") + ".json"
    add_to_bundle(engine_bundle, {side: text})  # listed with its digest: the content is what is tested
    with pytest.raises(BundleError) as e:
        select_engine(Bundle.open(engine_bundle), "tensorrt", "fp16", [A100], "10.8.0")
    message = str(e.value)
    assert f"{side}: engine sidecar is not valid JSON (" in message and why in message and "\n" not in message


def test_stale_engine_is_refused(engine_bundle):
    """An engine built from another model.onnx than the one the bundle lists now is never run."""
    manifest = json.loads((engine_bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["sha256"] = "f" * 64
    write_manifest(engine_bundle, manifest)
    with pytest.raises(EngineMismatchError, match=r"built from a different model.onnx"):
        select_engine(Bundle.open(engine_bundle, verify=False), "tensorrt", "fp16", [A100], "10.8.0")


def test_swapped_engine_is_refused_even_when_relisted(engine_bundle):
    """The A100 plan replaced by the H100 one *and* re-listed (manifest digest recomputed, as add_to_bundle does):
    its bytes are not the engine its sidecar records, so it is refused; the H100 engine still runs."""
    name = sidecar(A100).file
    add_to_bundle(engine_bundle, {name: plan_bytes(H100, "fp16")})
    bundle = Bundle.open(engine_bundle)
    assert bundle.manifest.sha256(name) == sha256_file(engine_bundle / name)  # the listing agrees with the bytes
    with pytest.raises(EngineMismatchError) as e:
        select_engine(bundle, "tensorrt", "fp16", [A100], "10.8.0")
    message = str(e.value)
    assert "\n" not in message and f"{name} (its bytes (sha256 " in message
    assert "are not the engine its sidecar records" in message and "rebuild it" in message
    assert select_engine(bundle, "tensorrt", "fp16", [H100], "10.8.0").path.read_bytes() == plan_bytes(H100, "fp16")


def test_engine_whose_source_model_is_gone_is_refused(engine_bundle):
    """model.onnx dropped from the bundle and its listing: no engine built from it is run."""
    manifest = json.loads((engine_bundle / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    manifest["variants"].pop("fp32")
    (engine_bundle / "model.onnx").unlink()
    write_manifest(engine_bundle, manifest)
    bundle = Bundle.open(engine_bundle)
    with pytest.raises(EngineMismatchError, match=r"\(built from model.onnx, which this bundle no longer lists\)"):
        select_engine(bundle, "tensorrt", "fp16", [A100], "10.8.0")


def test_engine_whose_source_file_is_missing_is_refused(engine_bundle, monkeypatch):
    """Still listed, but the file is gone from the folder: refused, and `supports` (what `auto` asks) says no."""
    from clap_edge.runtime.backends.tensorrt.runner import TensorRTRunner

    model = (engine_bundle / "model.onnx").read_bytes()
    (engine_bundle / "model.onnx").unlink()
    bundle = Bundle.open(engine_bundle)
    with pytest.raises(EngineMismatchError, match=r"built from model.onnx, which is missing from the bundle"):
        select_engine(bundle, "tensorrt", "fp16", [A100], "10.8.0")
    monkeypatch.setattr(TensorRTRunner, "library_version", classmethod(lambda cls: "10.8.0"))
    monkeypatch.setattr(TensorRTRunner, "candidate_hosts", classmethod(lambda cls: [A100]))
    assert not TensorRTRunner.supports(bundle, "fp16")
    (engine_bundle / "model.onnx").write_bytes(model)  # put back: the same engine is usable again
    assert TensorRTRunner.supports(bundle, "fp16")


def test_engine_backends_registered_and_explain(engine_bundle):
    from clap_edge.runtime.backends import BACKENDS, available_backends, create_runner

    assert {"tensorrt", "aoti"} <= set(BACKENDS)
    bundle = Bundle.open(engine_bundle)
    assert "aoti" not in available_backends(bundle)  # no aoti engine in it
    with pytest.raises(BackendUnavailableError, match=r"'aoti' cannot run bundle .*no aoti engine in this bundle"):
        create_runner(bundle, "aoti")


def test_tensorrt_backend_not_installed_message(engine_bundle, monkeypatch):
    from clap_edge.runtime.backends import create_runner

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    with pytest.raises(BackendUnavailableError, match=r"pip install 'clap-edge\[gpu\]' --extra-index-url https://pypi.nvidia.com"):
        create_runner(Bundle.open(engine_bundle), "tensorrt:fp16")


# ---- chunking -----------------------------------------------------------------------


def test_plan_chunks():
    assert plan_chunks(40, 1, 16) == [(0, 16, 16), (16, 32, 16), (32, 40, 8)]
    assert plan_chunks(3, 4, 8) == [(0, 3, 4)]  # padded up to the profile's min
    assert plan_chunks(8, 8, 8) == [(0, 8, 8)]
    with pytest.raises(ValueError):
        plan_chunks(4, 8, 4)


def test_run_in_chunks_matches_one_big_run():
    x = np.random.default_rng(0).standard_normal((37, 3, 2, 2)).astype(np.float32)
    seen = []

    def engine(chunk):  # an "engine" for batch range [4, 16]: per-row sums
        assert 4 <= len(chunk) <= 16
        seen.append(len(chunk))
        flat = chunk.reshape(len(chunk), -1)
        return np.concatenate([flat.sum(1, keepdims=True), flat[:, :2]], axis=1)  # the embedding, schema 4

    out = run_in_chunks(x, 4, 16, engine)
    flat = x.reshape(37, -1)
    np.testing.assert_allclose(out[:, 0], flat.sum(1), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1:], flat[:, :2])
    assert seen == [16, 16, 5]


# ---- TensorRT build plan (no TensorRT needed) ---------------------------------------------


def test_tensorrt_plan_by_version_and_precision():
    v = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "qdq": "model.qdq.onnx"}
    assert plan_build("fp32", 10, v).source_variant == "fp32"
    # fp16 from the fp16 ONNX (precision in the graph), strongly typed, on 10 and 11 alike
    for major in (10, 11):
        p = plan_build("fp16", major, v)
        assert (p.source_variant, p.strongly_typed, p.flags) == ("fp16", True, ())
    # without it, TensorRT 10 falls back to weak typing with fp32 pins; 11 cannot
    p = plan_build("fp16", 10, {"fp32": "model.onnx"})
    assert p.flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and p.pin_fp32 and not p.strongly_typed
    with pytest.raises(BundleError, match="--fp16"):
        plan_build("fp16", 11, {"fp32": "model.onnx"})
    assert plan_build("bf16", 10, v).flags == ("BF16", "OBEY_PRECISION_CONSTRAINTS")
    with pytest.raises(ClapEdgeError, match="TensorRT 10"):
        plan_build("bf16", 11, v)
    assert plan_build("int8", 10, v).source_variant == "qdq" and "INT8" in plan_build("int8", 10, v).flags
    assert plan_build("int8", 11, v).strongly_typed
    with pytest.raises(BundleError, match="model.qdq.onnx"):
        plan_build("int8", 10, {"fp32": "model.onnx"})


def test_fp32_layer_selection():
    types = ["CONVOLUTION", "NORMALIZATION", "MATRIX_MULTIPLY", "SOFTMAX", "ELEMENTWISE", "REDUCE"]
    assert fp32_layer_indices(types) == [1, 3, 5]


# ---- CLI without TensorRT ----------------------------------------------------------------


def test_build_engine_tensorrt_without_tensorrt_exits_2(runtime_bundle, monkeypatch):
    from clap_edge.apps.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(main, ["build-engine", str(runtime_bundle), "--engine", "tensorrt",
                                       "--precision", "fp16"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "TensorRT is not installed" in lines[0] and "pip install 'clap-edge[gpu]'" in lines[0]
    assert "https://pypi.nvidia.com" in lines[0]
    assert "engines" not in json.loads((runtime_bundle / "manifest.json").read_text())


def test_build_engine_rejects_bad_batch_profile(runtime_bundle):
    from clap_edge.apps.cli import main

    result = CliRunner().invoke(main, ["build-engine", str(runtime_bundle), "--engine", "aoti", "--batch", "8,4,2"])
    assert result.exit_code == 2 and "MIN <= OPT <= MAX" in result.output


# ---- fp16 cast pass, ORT TensorRT EP options ----------------------------------------------


def test_cast_pass_keeps_layernorm_fp32_and_stays_close(runtime_bundle):
    import torch

    from clap_edge.runtime.backends.torch.casting import cast_program_module

    program = torch.export.load(str(runtime_bundle / "model.pt2"))
    x = torch.from_numpy(np.load(runtime_bundle / "calibration.npy"))
    reference = program.module()(x)  # the embedding (schema 4: the model's one output)
    module = cast_program_module(torch.export.load(str(runtime_bundle / "model.pt2")).module(), "bf16")
    norms = [n for n in module.graph.nodes if n.target is torch.ops.aten.layer_norm.default]
    assert norms
    for node in norms:
        assert node.args[0].target is torch.ops.aten.to.dtype and node.args[0].args[1] is torch.float32
        weight = module.get_parameter(node.args[2].target)
        assert weight.dtype is torch.float32
    linear = next(n for n in module.graph.nodes if n.target is torch.ops.aten.linear.default)
    assert module.get_parameter(linear.args[1].target).dtype is torch.bfloat16
    embedding = module(x)
    assert embedding.dtype is torch.bfloat16
    # bf16 keeps ~3 significant digits; the unit embeddings' values are O(0.1)
    assert (embedding.float() - reference).abs().max().item() < 0.02


def test_ort_tensorrt_provider_options_cache_in_bundle(tmp_path):
    from clap_edge.runtime.backends.onnxruntime.loader import ORT_TRT_CACHE_DIR, provider_options

    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt, cuda, cpu = provider_options(providers, tmp_path, precision="fp16", device_id=1)
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == str(tmp_path / ORT_TRT_CACHE_DIR)
    assert trt["trt_timing_cache_enable"] and trt["trt_fp16_enable"] and not trt["trt_int8_enable"]
    assert trt["device_id"] == 1 and cuda == {"device_id": 1} and cpu == {}


@pytest.mark.skipif("TensorrtExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="onnxruntime-gpu with the TensorRT execution provider is not installed here")
def test_onnxruntime_tensorrt_ep_runs(runtime_bundle):  # pragma: no cover - needs a GPU
    from clap_edge.runtime.backends import RunnerOptions, create_runner

    bundle = Bundle.open(runtime_bundle)
    x = np.load(runtime_bundle / "calibration.npy")
    with create_runner(bundle, "onnxruntime", RunnerOptions(device="tensorrt")) as runner:
        out = runner.infer(x)
    with create_runner(bundle, "onnxruntime") as cpu:
        assert np.abs(cpu.infer(x).logits - out.logits).max() < 1e-2


def test_auto_picks_a_tensorrt_engine_built_for_this_gpu(engine_bundle, monkeypatch, tmp_path):
    """With TensorRT installed and an fp16 engine for this GPU, ``auto`` runs it (never int8: it changes results)."""
    from clap_edge.runtime.backends import choose_auto_backend
    from clap_edge.runtime.backends.tensorrt.runner import TensorRTRunner

    monkeypatch.setenv("CLAP_EDGE_CACHE", str(tmp_path))  # no recorded bench
    monkeypatch.setattr(TensorRTRunner, "is_available", classmethod(lambda cls: True))
    monkeypatch.setattr(TensorRTRunner, "library_version", classmethod(lambda cls: "10.8.0"))
    bundle = Bundle.open(engine_bundle)
    monkeypatch.setattr(TensorRTRunner, "candidate_hosts", classmethod(lambda cls: [H100]))
    assert choose_auto_backend(bundle) == "tensorrt:fp16"
    monkeypatch.setattr(TensorRTRunner, "candidate_hosts", classmethod(lambda cls: [ORIN]))
    assert choose_auto_backend(bundle) == "onnxruntime"  # no engine for this GPU


@pytest.mark.parametrize("precision, tol", [("fp16", 5e-3), ("bf16", 5e-2)])
def test_torch_backend_reduced_precision_runs_close_to_fp32(runtime_bundle, precision, tol):
    """torch:fp16 / torch:bf16 (a plain module.half() failed the program's export-time dtype asserts)."""
    from clap_edge.runtime.backends import RunnerOptions, create_runner

    bundle = Bundle.open(runtime_bundle)
    x = np.load(runtime_bundle / "calibration.npy")
    with create_runner(bundle, "onnxruntime") as ort:
        reference = ort.infer(x)
    with create_runner(bundle, "torch", RunnerOptions(precision=precision)) as runner:
        out = runner.infer(x)
        assert runner.precision == precision
    assert out.embedding.dtype == np.float32
    assert np.abs(out.embedding - reference.embedding).max() < tol  # unit-norm embeddings
