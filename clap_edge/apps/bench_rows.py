"""Bench rows from timed samples: latency percentiles, rates per wall and per CPU second, ratios, fractions.

Every timed call is a (wall s, CPU s) pair; CPU is the worker process's time with the runner's threads
counted. On a shared machine the wall time of a call grows with the load (waiting for a core), its CPU
time hardly does, so the figures that compare rows (speed-ups, ratios to the peers, fractions of the
GEMM ceiling) use CPU time, and wall-time figures are kept beside them for latency.

- p90 / p99 are reported only from >= ``TAIL_MIN_SAMPLES`` calls (else None and ``tail_reported`` False):
  a p99 of 20 calls is its maximum.
- ``fraction_of_ceiling`` = the row's GFLOP per CPU-second / the same-round GEMM ceiling's; a value above
  1.0 cannot be a real result (the model cannot beat the library's best kernel on its own product), so it
  is set to None and flagged in ``fraction_flag`` with the raw value kept.
- ``fraction_of_model_gemms`` = the row's images per CPU-second / its library's on the model's own matrix
  products alone (:mod:`clap_edge.apps.model_gemms`), at the row's batch, same rounds: the yardstick that
  shares the model's weight footprint, so it holds under load where the square GEMM's does not.
- ``speedup_vs_torch`` is against open_clip eager (``peer:open_clip``) where it was run, else the ``torch``
  runner (the bundle's model.pt2 program, eager); ``env["speedup_baseline"]`` says which.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TAIL_MIN_SAMPLES = 50
NOISE_ABOVE = 1.0  # a fraction of the ceiling above this is measurement noise, not a result
BASELINES = (("peer:open_clip", "open_clip eager (peer:open_clip)"),
             ("torch", "torch runner: the bundle's model.pt2 program, eager (not open_clip's own modules)"))

__all__ = ["TAIL_MIN_SAMPLES", "model_row", "add_ratios", "add_ceiling_fractions", "lead_summary"]


def model_row(backend: str, batch_size: int, threads: int | None, precision: str, samples: list,
              memory: dict[str, Any], loads: list[float]) -> dict[str, Any]:
    """A model-only row from ``samples`` [(wall s, CPU s)] of one backend at one batch size."""
    wall = np.asarray([s[0] for s in samples]) * 1e3
    cpu = np.asarray([s[1] for s in samples]) * 1e3
    tail = len(wall) >= TAIL_MIN_SAMPLES
    return {
        "backend": backend, "mode": "model", "batch_size": batch_size, "threads": threads, "precision": precision,
        "p50_ms": _r(np.percentile(wall, 50), 3),
        "p90_ms": _r(np.percentile(wall, 90), 3) if tail else None,
        "p99_ms": _r(np.percentile(wall, 99), 3) if tail else None,
        "mean_ms": _r(wall.mean(), 3), "tail_reported": tail,
        "cpu_p50_ms": _r(np.percentile(cpu, 50), 3), "cpu_mean_ms": _r(cpu.mean(), 3),
        "images_per_s": _r(batch_size * len(wall) / (wall.sum() / 1e3)),
        "images_per_cpu_s": _r(batch_size * len(cpu) / (cpu.sum() / 1e3)) if cpu.sum() > 0 else None,
        "cpu_per_wall": _r(cpu.sum() / wall.sum(), 3),  # ~threads when the machine is quiet
        "load_1min": [_r(min(loads)), _r(max(loads))] if loads else None,
        "peak_rss_mb": memory["peak_rss_mb"], "peak_gpu_mb": memory["peak_gpu_mb"], "iters": len(wall),
    }


def _rate(row: dict[str, Any]) -> float | None:
    """Images per CPU-second where recorded, else per wall second (the clock all ratios use)."""
    return row.get("images_per_cpu_s") or row.get("images_per_s")


def add_ratios(results: list[dict[str, Any]], flops_per_image: float | None) -> str | None:
    """GFLOP/s (wall and CPU), speed-up vs the baseline and vs the best peer; returns the baseline's label."""
    model = [r for r in results if r["mode"] == "model"]
    names = {r["backend"] for r in model}
    baseline, label = next(((b, label) for b, label in BASELINES if b in names), (None, None))
    base = {r["batch_size"]: _rate(r) for r in model if r["backend"] == baseline}
    peers: dict[int, float] = {}
    for r in model:
        if r["backend"].startswith("peer:"):
            peers[r["batch_size"]] = max(peers.get(r["batch_size"], 0.0), _rate(r) or 0.0)
    for row in model:
        rate, b = _rate(row), base.get(row["batch_size"])
        row["speedup_vs_torch"] = _r(rate / b, 3) if b and rate else None
        best_peer = peers.get(row["batch_size"])
        row["vs_best_peer"] = _r(rate / best_peer, 3) if best_peer and rate else None
        row["gflops_per_s"] = _r(flops_per_image * row["images_per_s"] / 1e9) if flops_per_image else None
        cpu_rate = row.get("images_per_cpu_s")
        row["gflops_per_cpu_s"] = _r(flops_per_image * cpu_rate / 1e9) if flops_per_image and cpu_rate else None
    return label


def add_ceiling_fractions(results: list[dict[str, Any]], ceiling: dict[str, Any] | None) -> None:
    """``ceiling``, ``ceiling_gflops_per_s`` (per CPU-second where measured), ``fraction_of_ceiling`` (same
    clock as the row) and ``fraction_of_peak`` (the core's FMA / int8 peak) on every model row."""
    from clap_edge.apps.ceiling import ceiling_key

    ceiling = ceiling or {}
    ceilings, peak = ceiling.get("ceilings", {}), ceiling.get("peak") or {}
    for row in results:
        if row["mode"] != "model":
            continue
        key = ceiling_key(row["backend"], row.get("precision"))
        found = ceilings.get(key, {}) if key else {}
        cpu_clock = bool(found.get("gflops_per_cpu_s") and row.get("gflops_per_cpu_s"))
        top = found.get("gflops_per_cpu_s") if cpu_clock else found.get("gflops_per_s")
        mine = row.get("gflops_per_cpu_s") if cpu_clock else row.get("gflops_per_s")
        row["ceiling"] = key if top else None
        row["ceiling_gflops_per_s"] = top
        row["fraction_clock"] = ("cpu" if cpu_clock else "wall") if top else None
        fraction = _r(mine / top, 3) if top and mine else None
        row["fraction_of_ceiling"], row["fraction_flag"] = fraction, None
        if fraction is not None and fraction > NOISE_ABOVE:
            row["fraction_of_ceiling"] = None
            row["fraction_flag"] = f"noise: {fraction:.2f} of the ceiling (> {NOISE_ABOVE:g} is not a result)"
        row["fraction_of_ceiling_raw"] = fraction
        row["fraction_of_peak"] = _fraction_of_peak(row, peak)
        _add_model_gemm_fraction(row, key, ceiling.get("model_gemms") or {})


def _add_model_gemm_fraction(row: dict[str, Any], key: str | None, model_gemms: dict[str, Any]) -> None:
    """``fraction_of_model_gemms``: the row's speed / its library's on the model's own products alone, at
    the row's batch: the median of the per-round ratios where each round's model call is paired with the
    products sample right after it (``model_gemms_paired``), else the ratio of the whole-run rates (None
    where not measured; flagged as noise above 1.0 like the square-GEMM fraction)."""
    found = ((model_gemms.get(str(row.get("batch_size"))) or {}).get("ceilings") or {}).get(key or "", {})
    top, mine = found.get("images_per_cpu_s"), row.get("images_per_cpu_s")
    fraction = _r(mine / top, 3) if top and mine else None
    if top and row.get("model_gemms_paired") is not None:  # round by round (bench.py): drift cancels
        fraction = row["model_gemms_paired"]
    row["model_gemms_images_per_cpu_s"] = top
    row["fraction_of_model_gemms_raw"] = fraction
    noisy = fraction is not None and fraction > NOISE_ABOVE
    row["fraction_of_model_gemms"] = None if noisy else fraction
    row["model_gemms_flag"] = f"noise: {fraction:.2f} of the model's GEMMs (> {NOISE_ABOVE:g} is not a result)" \
        if noisy else None


def _fraction_of_peak(row: dict[str, Any], peak: dict[str, Any]) -> float | None:
    precision = row.get("precision") or ""
    if precision == "fp32":
        top = (peak.get("fp32") or {}).get("gflops_per_cpu_s")
    elif precision.startswith("int8"):
        top = (peak.get("int8") or {}).get("gops_per_cpu_s")
    else:
        top = None  # no bf16 / fp16 probe
    mine = row.get("gflops_per_cpu_s")
    return _r(mine / top, 3) if top and mine else None


def lead_summary(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best clap-edge row vs best peer row per batch size (images per CPU-second); None without peers."""
    model = [r for r in results if r["mode"] == "model" and _rate(r)]
    if not any(r["backend"].startswith("peer:") for r in model):
        return None
    out = {}
    for batch in sorted({r["batch_size"] for r in model}):
        rows = [r for r in model if r["batch_size"] == batch]
        ours = max((r for r in rows if not r["backend"].startswith("peer:")), key=_rate, default=None)
        peer = max((r for r in rows if r["backend"].startswith("peer:")), key=_rate, default=None)
        if ours and peer:
            out[str(batch)] = {"best_clap_edge": ours["backend"], "best_clap_edge_images_per_cpu_s": _rate(ours),
                               "best_peer": peer["backend"], "best_peer_images_per_cpu_s": _rate(peer),
                               "ratio": _r(_rate(ours) / _rate(peer), 3),
                               # the bench's own agreement (calibration batch): read the ratio with it
                               "best_clap_edge_top1_agreement": ours.get("top1_agreement_vs_fp32"),
                               "best_peer_top1_agreement": peer.get("top1_agreement_vs_fp32")}
    return out


def _r(x: float, digits: int = 2) -> float:
    return round(float(x), digits)
