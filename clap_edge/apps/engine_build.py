"""Build a compiled engine into a bundle: build (export room), check parity by running it through its
runtime backend (runtime room), then store engine + sidecar atomically (bundle writer).

    from clap_edge.apps.engine_build import EngineBuildConfig, build_engine
    sidecar = build_engine(EngineBuildConfig("bundle", engine="aoti", precision="fp16", device="cuda"))

Nothing is written when the build or the parity check fails.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from clap_edge import __version__
from clap_edge.core.errors import BundleError, ClapEdgeError
from clap_edge.export.bundle import Bundle, sha256_file
from clap_edge.export.bundle.engines import (ENGINE_KINDS, PRECISIONS, EngineChoice, EngineSidecar, engine_basename,
                                              engine_entries)

log = logging.getLogger(__name__)

# Parity vs ONNX Runtime (CPU, fp32, model.onnx) on the bundle's calibration images: max |dlogit| and the
# least top-1 agreement accepted per precision. fp32 engines must agree exactly up to kernel rounding;
# reduced precisions move logits (which carry logit_scale ~100) by more, and may flip near ties.
DEFAULT_TOLERANCE = {"fp32": 1e-2, "fp16": 0.5, "bf16": 1.5, "int8": 3.0}
MIN_TOP1 = {"fp32": 1.0, "fp16": 0.9, "bf16": 0.85, "int8": 0.8}

__all__ = ["EngineBuildConfig", "build_engine", "DEFAULT_TOLERANCE", "MIN_TOP1"]


@dataclass
class EngineBuildConfig:
    bundle: str | Path
    engine: str  # "tensorrt" | "aoti"
    precision: str = "fp32"
    batch: tuple[int, int, int] = (1, 8, 64)  # min, opt, max
    workspace_mb: int = 4096  # tensorrt
    timing_cache: str | None = None  # tensorrt: load (if present) and save tactic timings here
    device: str | None = None  # aoti: "cpu" / "cuda[:i]" (default: cuda if torch sees one); tensorrt: "cuda[:i]"
    tolerance: float | None = None  # max |dlogit| vs ONNX Runtime; default DEFAULT_TOLERANCE[precision]
    progress: Callable[[str], None] | None = field(default=None, repr=False)


def build_engine(cfg: EngineBuildConfig) -> EngineSidecar:
    """Build, check and store one engine; returns its sidecar."""
    say = cfg.progress or log.info
    if cfg.engine not in ENGINE_KINDS:
        raise ClapEdgeError(f"unknown engine {cfg.engine!r}; expected one of {', '.join(ENGINE_KINDS)}")
    if cfg.precision not in PRECISIONS:
        raise ClapEdgeError(f"unknown precision {cfg.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if cfg.engine == "tensorrt":
        from clap_edge.export.builders.engines.tensorrt import import_tensorrt

        import_tensorrt()  # before opening anything: the one-line "not installed" error
    root = Path(cfg.bundle)
    if not root.is_dir():
        raise BundleError(f"{root}: build-engine needs a bundle directory (unpack a .tar bundle first)")
    bundle = Bundle.open(root)
    calibration, reference = _reference(bundle)
    device = _device(cfg)
    batch = tuple(int(b) for b in cfg.batch)
    with tempfile.TemporaryDirectory(prefix="clap-edge-engine-") as tmp:
        start = time.perf_counter()
        built = _build(cfg, bundle, batch, device, Path(tmp) / f"engine{ENGINE_KINDS[cfg.engine][1]}", say)
        seconds = time.perf_counter() - start
        name = engine_basename(cfg.engine, built.device, cfg.precision, batch)
        sidecar = EngineSidecar(
            engine=cfg.engine, file=name + ENGINE_KINDS[cfg.engine][1], precision=cfg.precision, batch=batch,
            device=built.device, library=built.library, library_version=built.library_version,
            source_model=built.source_model, source_sha256=bundle.manifest.sha256(built.source_model),
            engine_sha256=sha256_file(built.path),  # the engine's own digest: a swapped engine is refused
            built_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), build_seconds=round(seconds, 1),
            parity={}, options=built.options, clap_edge_version=__version__)
        say("checking parity against ONNX Runtime on the calibration images")
        sidecar = replace(sidecar, parity=_parity(cfg, bundle, sidecar, built.path, device, calibration, reference))
        entry = sidecar.manifest_entry(name + ".json")
        engines = [e for e in engine_entries(bundle) if e.file != entry.file] + [entry]
        from clap_edge.export.bundle.writer import add_to_bundle

        add_to_bundle(root, {sidecar.file: built.path,
                             entry.sidecar: json.dumps(sidecar.to_json(), indent=2).encode()}, engines=engines)
    say(f"wrote {root / sidecar.file}")
    return sidecar


def _reference(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    from clap_edge.export.parity import run_onnx

    calibration = bundle.calibration()
    if calibration is None:
        raise BundleError(f"{bundle.root}: no calibration.npy to check the engine's parity on (re-export the bundle)")
    from clap_edge.export.bundle import ClassMatrix

    logits, _ = run_onnx(bundle.variant_file("fp32"), calibration, ClassMatrix.from_bundle(bundle))
    return calibration, logits


def _device(cfg: EngineBuildConfig) -> str:
    if cfg.device:
        return cfg.device
    if cfg.engine == "tensorrt":
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _build(cfg, bundle, batch, device, out: Path, say):
    if cfg.engine == "aoti":
        from clap_edge.export.builders.engines.aoti import build_aoti
        from clap_edge.runtime.backends.aoti.devices import torch_device
        from clap_edge.runtime.backends.torch.casting import cast_program_module

        return build_aoti(bundle, cfg.precision, batch, device, out, say, describe=torch_device,
                          cast=cast_program_module)
    from clap_edge.export.builders.engines.tensorrt import build_tensorrt

    if not device.startswith("cuda"):
        raise ClapEdgeError("TensorRT engines are built on (and for) a CUDA GPU: --device cuda[:index]")
    index = int(device.partition(":")[2] or 0)
    return build_tensorrt(bundle, cfg.precision, batch, out, cfg.workspace_mb, cfg.timing_cache, index, say)


def _parity(cfg, bundle, sidecar, path, device, calibration, reference) -> dict:
    """Run the new engine through its runtime backend on the calibration images; fail beyond tolerance."""
    from clap_edge.export.parity import compare_logits
    from clap_edge.runtime.backends import RunnerOptions, runner_class

    choice = EngineChoice(entry=sidecar.manifest_entry(None), sidecar=sidecar, path=path)
    options = RunnerOptions(device=device, precision=cfg.precision, extra={"engine_choice": choice})
    with runner_class(cfg.engine)(bundle, options) as runner:
        logits = runner.infer(calibration).logits
    report = compare_logits(reference, logits)
    tolerance = DEFAULT_TOLERANCE[cfg.precision] if cfg.tolerance is None else cfg.tolerance
    min_top1 = MIN_TOP1[cfg.precision]
    if not (report.max_abs_logit_diff <= tolerance and report.top1_agreement >= min_top1):
        raise BundleError(
            f"parity check failed for the {cfg.engine} {cfg.precision} engine: max |dlogit| "
            f"{report.max_abs_logit_diff:.3g} vs ONNX Runtime (tolerance {tolerance:g}), top-1 agreement "
            f"{report.top1_agreement:.1%} (at least {min_top1:.0%}) on {report.n_images} calibration images; "
            f"nothing was written")
    return report.as_manifest("_vs_onnxruntime", tolerance=tolerance, min_top1_agreement=min_top1,
                              reference="onnxruntime CPU, fp32 model.onnx, calibration.npy")
