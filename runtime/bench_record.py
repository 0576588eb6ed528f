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
from clap_edge.core.machine import INT8_AGREEMENT_FLOOR, cpu_info
from clap_edge.export.bundle import Bundle

# The one int8 floor (core.machine.INT8_AGREEMENT_FLOOR): a variant whose top-1 agrees with fp32 on fewer images
# than this is never picked by auto, however fast.
AUTO_MIN_AGREEMENT = INT8_AGREEMENT_FLOOR
INT8_VARIANTS = ("int8", "qdq", "openvino-int8")

__all__ = ["INT8_AGREEMENT_FLOOR", "AUTO_MIN_AGREEMENT", "record_bench", "load_bench_record",
           "recorded_fastest_backend", "recorded_agreement", "agreement_ok", "int8_speed_ok"]


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


def recorded_here(bundle: Bundle) -> dict[str, Any] | None:
    """The bench record for this bundle if it was measured on this CPU model, else None."""
    record = load_bench_record(bundle)
    if not record or record.get("env", {}).get("cpu_model") != cpu_info()[0]:
        return None
    return record


def recorded_fastest_backend(bundle: Bundle, candidates: list[str]) -> str | None:
    """Fastest candidate at the smallest recorded batch, measured on this CPU, without top-1 drift.
    Speed is images per CPU-second where the record has it (it holds on a busy machine), else per second."""
    record = recorded_here(bundle)
    if record is None:
        return None
    rows = [r for r in record.get("results", []) if r.get("mode", "model") == "model" and r["backend"] in candidates
            and (r.get("top1_agreement_vs_fp32") is None or r["top1_agreement_vs_fp32"] >= AUTO_MIN_AGREEMENT)]
    if not rows:
        return None
    smallest = min(r["batch_size"] for r in rows)
    return max((r for r in rows if r["batch_size"] == smallest),
               key=lambda r: r.get("images_per_cpu_s") or r["images_per_s"])["backend"]



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


def int8_speed_ok(bundle: Bundle, variant: str | None) -> bool:
    """Whether ``auto`` may consider int8 ``variant`` on this CPU for speed.

    The export measured the variant's CPU time against fp32 on its CPU (the manifest's ``parity`` entry:
    ``int8_path``, ``speed_vs_fp32``). On a CPU with the same int8 path (AMX, VNNI, AVX2-only, ...) that
    measurement decides: slower than fp32 there, never picked. On another int8 path the export's figure
    says nothing (int8 can be 4x faster with VNNI and slower than fp32 without), so the variant is only
    considered when a ``clap-edge bench --record`` measured it on this CPU; otherwise auto stays fp32."""
    if variant not in INT8_VARIANTS:
        return True
    from clap_edge.core.machine import int8_path

    entry = bundle.manifest.parity.get(variant) or {}
    if entry.get("int8_path") == int8_path() and entry.get("speed_vs_fp32") is not None:
        return float(entry["speed_vs_fp32"]) > 1.0
    return recorded_here(bundle) is not None
