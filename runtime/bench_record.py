"""Recorded bench results: where ``clap-edge bench --record`` stores them and how ``auto`` reads them.

Kept apart from the bench app so that choosing ``backend="auto"`` needs only json and the bundle,
never the benchmark machinery (the app writes records, the runtime reads them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clap_edge.core.io import atomic_write_text
from clap_edge.core.machine import cpu_info
from clap_edge.export.bundle import Bundle

AUTO_MIN_AGREEMENT = 0.99  # auto never picks a backend that flips more top-1s than this vs fp32

__all__ = ["AUTO_MIN_AGREEMENT", "record_bench", "load_bench_record", "recorded_fastest_backend",
           "recorded_agreement", "agreement_ok"]


def _cache_dir() -> Path:
    if os.environ.get("CLAP_EDGE_CACHE"):
        return Path(os.environ["CLAP_EDGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clap-edge"


def _record_path(bundle: Bundle) -> Path:
    model_sha = bundle.manifest.sha256("model.onnx") or "no-onnx"
    return _cache_dir() / "bench" / f"{model_sha[:32]}.json"


def record_bench(report: dict[str, Any], bundle: Bundle) -> Path:
    """Store a report where ``backend="auto"`` finds it (user cache, keyed by the model's sha256)."""
    return atomic_write_text(_record_path(bundle), json.dumps(report, indent=2))


def load_bench_record(bundle: Bundle) -> dict[str, Any] | None:
    """A recorded report for this bundle's model: ``bench.json`` beside the bundle, else the user cache."""
    for path in (bundle.root / "bench.json", _record_path(bundle)):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def recorded_fastest_backend(bundle: Bundle, candidates: list[str]) -> str | None:
    """Fastest candidate at the smallest recorded batch, measured on this CPU, without top-1 drift."""
    record = load_bench_record(bundle)
    if not record or record.get("env", {}).get("cpu_model") != cpu_info()[0]:
        return None
    rows = [r for r in record.get("results", []) if r.get("mode", "model") == "model" and r["backend"] in candidates
            and (r.get("top1_agreement_vs_fp32") is None or r["top1_agreement_vs_fp32"] >= AUTO_MIN_AGREEMENT)]
    if not rows:
        return None
    smallest = min(r["batch_size"] for r in rows)
    return max((r for r in rows if r["batch_size"] == smallest), key=lambda r: r["images_per_s"])["backend"]



def recorded_agreement(bundle: Bundle, variant: str | None) -> float | None:
    """Top-1 agreement with fp32 the manifest records for ``variant`` (None: nothing recorded, or fp32 itself).

    The export's ``drift`` section (a labelled eval set, per domain) wins: its worst domain counts, so a
    variant that is fine on average but flips answers on one domain is not trusted. Without it, the
    ``parity`` entry's agreement on the calibration batch."""
    if variant in (None, "fp32"):
        return None
    drift = (bundle.manifest.drift or {}).get(variant)
    if isinstance(drift, dict) and drift.get("agreement") is not None:
        return min(float(drift["agreement"]), float(drift.get("min_domain_agreement", drift["agreement"])))
    parity = bundle.manifest.parity.get(variant)
    if isinstance(parity, dict) and parity.get("top1_agreement_vs_fp32") is not None:
        return float(parity["top1_agreement_vs_fp32"])
    return None


def agreement_ok(bundle: Bundle, variant: str | None) -> bool:
    """Whether ``auto`` may pick ``variant``: no recorded agreement below AUTO_MIN_AGREEMENT."""
    agreement = recorded_agreement(bundle, variant)
    return agreement is None or agreement >= AUTO_MIN_AGREEMENT
