"""OpenVINO and torch-compile runners: parity with ONNX Runtime / torch, options, missing-library errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from clap_edge.core.errors import BackendUnavailableError
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.backends import BACKENDS, RunnerOptions, available_backends, create_runner


@pytest.fixture(scope="module")
def bundle(runtime_bundle):
    return Bundle.open(runtime_bundle)


@pytest.fixture(scope="module")
def batch(bundle):
    calib = np.load(bundle.file("calibration.npy"))
    noise = np.random.default_rng(0).standard_normal((3, *bundle.input_shape)).astype(np.float32)
    return np.concatenate([calib, noise])


@pytest.fixture(scope="module")
def ort_out(bundle, batch):
    with create_runner(bundle, "onnxruntime", RunnerOptions(threads=1)) as runner:
        return runner.infer(batch)


def test_backends_registered_and_available(bundle):
    assert {"openvino", "torch-compile"} <= set(BACKENDS)
    assert {"openvino", "torch-compile", "onnxruntime", "torch"} <= set(available_backends(bundle))


def test_openvino_fp32_matches_onnxruntime(bundle, batch, ort_out):
    with create_runner(bundle, "openvino", RunnerOptions(threads=1, extra={"precision": "fp32"})) as runner:
        out = runner.infer(batch)
        assert runner.precision == "fp32"
        assert str(runner._compiled.get_property("INFERENCE_NUM_THREADS")) == "1"
    assert out.logits.shape == ort_out.logits.shape and out.embedding.shape == ort_out.embedding.shape
    assert np.abs(out.logits - ort_out.logits).max() <= 1e-3
    assert np.abs(out.embedding - ort_out.embedding).max() <= 1e-4
    assert (out.logits.argmax(1) == ort_out.logits.argmax(1)).all()


def test_openvino_default_precision_is_reported_and_close(bundle, batch, ort_out):
    with create_runner(bundle, "openvino", RunnerOptions(threads=1)) as runner:
        out = runner.infer(batch)
        reported = str(runner._compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        assert runner.precision in {"fp32", "bf16", "fp16"}
        assert {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[runner.precision] in reported
    # bf16 keeps 8 mantissa bits: embeddings (unit norm) stay within a few hundredths
    tol = 1e-4 if runner.precision == "fp32" else 5e-2
    assert np.abs(out.embedding - ort_out.embedding).max() <= tol


def test_openvino_bad_precision_option(bundle):
    from clap_edge.core.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="no precision 'int4'"):
        create_runner(bundle, "openvino", RunnerOptions(precision="int4")).activate()
    with pytest.raises(BackendUnavailableError, match="no precision 'int4'"):
        create_runner(bundle, "openvino:int4")


@pytest.mark.slow
def test_torch_compile_matches_torch(bundle, batch):
    import torch

    threads = torch.get_num_threads()
    try:
        with create_runner(bundle, "torch", RunnerOptions(threads=1)) as eager:
            ref = eager.infer(batch)
        with create_runner(bundle, "torch-compile", RunnerOptions(threads=1)) as compiled:
            out = compiled.infer(batch)
            assert compiled.module is not None and compiled.compile_mode == "default"
    finally:
        torch.set_num_threads(threads)
    assert np.abs(out.logits - ref.logits).max() <= 1e-4
    assert (out.logits.argmax(1) == ref.logits.argmax(1)).all()


def test_missing_openvino_names_the_extra(runtime_bundle):
    # A real missing library: openvino made unimportable in a fresh interpreter.
    code = textwrap.dedent(f"""
        import sys
        sys.modules["openvino"] = None
        from clap_edge.export.bundle import Bundle
        from clap_edge.core.errors import BackendUnavailableError
        from clap_edge.runtime.backends import available_backends, create_runner
        bundle = Bundle.open({str(runtime_bundle)!r})
        assert "openvino" not in available_backends(bundle)
        try:
            create_runner(bundle, "openvino")
        except BackendUnavailableError as e:
            print(e)
        else:
            raise SystemExit("no error")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "'openvino' is not installed" in result.stdout and "pip install 'clap-edge[openvino]'" in result.stdout


def test_openvino_runner_reports_missing_library_on_activate(bundle, monkeypatch):
    # is_available() can be stale (library removed after the check): activate still names the extra.
    from clap_edge.runtime.backends.openvino.runner import OpenVINORunner

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendUnavailableError, match=r"clap-edge\[openvino\]"):
        OpenVINORunner(bundle).activate()


@pytest.mark.parametrize("library", ["clap_edge_no_such_parent.sub", "clap_edge_broken_parent.sub"])
def test_is_available_is_false_when_find_spec_raises_import_error(library, tmp_path, monkeypatch):
    """find_spec("a.b") imports "a": a missing or broken parent raises ImportError, which means "not available"."""
    import importlib.util

    from clap_edge.runtime.backends.base import Runner

    broken = tmp_path / "clap_edge_broken_parent"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('this package is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = type("FakeRunner", (Runner,), {"name": "fake", "library": library})
    with pytest.raises(ImportError):  # what the old `except ValueError` let through
        importlib.util.find_spec(library)
    assert fake.is_available() is False


def test_onnxruntime_pool_threads_do_not_spin(bundle, batch, ort_out):
    """threads > 1: ORT's intra-op pool sleeps between ops (spinning is CPU time for nothing); same outputs."""
    from clap_edge.runtime.backends.onnxruntime.loader import ALLOW_SPINNING

    with create_runner(bundle, "onnxruntime", RunnerOptions(threads=2)) as runner:
        assert runner.session.get_session_options().get_session_config_entry(ALLOW_SPINNING) == "0"
        out = runner.infer(batch)
    with create_runner(bundle, "onnxruntime", RunnerOptions(threads=1)) as runner:  # no pool: nothing to set
        with pytest.raises(RuntimeError, match="does not have configuration"):
            runner.session.get_session_options().get_session_config_entry(ALLOW_SPINNING)
    assert np.abs(out.embedding - ort_out.embedding).max() <= 1e-5
