"""Presenting a bench report: the JSON file (atomic), the PNG plot and a Markdown table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clap_edge.core.io import atomic_write_text

__all__ = ["write_report", "plot_report", "markdown_table"]


# ---- output ---------------------------------------------------------------------


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def plot_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: p50 latency, images/s and GFLOP/s vs batch size, one line per backend (model-only rows); the
    GFLOP/s panel draws each measured ceiling as a dashed line in its backend's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clap_edge.core.io import atomic_path

    rows = [r for r in report["results"] if r["mode"] == "model"]
    fig, (ax_lat, ax_ips, ax_gf) = plt.subplots(1, 3, figsize=(19, 4.8))
    ceilings = (report["env"].get("ceiling") or {}).get("ceilings", {})
    drawn: set[str] = set()
    for i, backend in enumerate(dict.fromkeys(r["backend"] for r in rows)):
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["batch_size"])
        label, color = f"{backend} ({mine[0]['precision']})", f"C{i}"
        bs = [r["batch_size"] for r in mine]
        ax_lat.plot(bs, [r["p50_ms"] for r in mine], marker="o", label=label, color=color)
        ax_ips.plot(bs, [r["images_per_s"] for r in mine], marker="o", label=label, color=color)
        if all(r.get("gflops_per_s") is not None for r in mine):
            ax_gf.plot(bs, [r["gflops_per_s"] for r in mine], marker="o", label=label, color=color)
        key = mine[0].get("ceiling")
        if key and key in ceilings and key not in drawn:
            drawn.add(key)
            ax_gf.axhline(ceilings[key]["gflops_per_s"], color=color, linestyle="--", linewidth=1,
                          label=f"ceiling {key} {ceilings[key]['gflops_per_s']:g}")
    env = report["env"]
    for ax, title, ylabel in ((ax_lat, "p50 latency per batch", "ms"), (ax_ips, "throughput", "images/s"),
                              (ax_gf, "effective GFLOP/s vs measured GEMM ceiling (dashed)", "GFLOP/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax_lat.set_yscale("log")
    ax_ips.legend(fontsize=8)
    ax_gf.set_yscale("log")
    ax_gf.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the lines stay visible
    flags = ", ".join((env.get("ceiling") or {}).get("cpu_flags") or env.get("cpu_flags") or [])
    fig.suptitle(f"{env['bundle']['model_name']} - {env['cpu_model']} [{flags}], {env['threads']} thread(s), "
                 f"load {_load(env)}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def _load(env: dict[str, Any]) -> str:
    before, after = env.get("load_average_before"), env.get("load_average_after")
    return f"{before[0]:.1f} -> {after[0]:.1f}" if before and after else "?"


def markdown_table(report: dict[str, Any]) -> str:
    """The model-only and end-to-end rows as a Markdown table (for bench/README.md)."""
    head = ("| backend | precision | batch | threads | p50 ms | p99 ms | images/s | x torch | GFLOP/s | ceiling GFLOP/s "
            "| of ceiling | peak RSS MB | top-1 vs fp32 |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    lines = [head]
    for r in report["results"]:
        if r["mode"] == "model":
            lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {r['threads']} | {r['p50_ms']:g} "
                         f"| {r['p99_ms']:g} | {r['images_per_s']:g} | {_md(r['speedup_vs_torch'])} "
                         f"| {_md(r['gflops_per_s'])} | {_md(r.get('ceiling_gflops_per_s'))} "
                         f"| {_pct(r.get('fraction_of_ceiling'))} "
                         f"| {_md(r['peak_rss_mb'])} | {_md(r['top1_agreement_vs_fp32'])} |")
    e2e = [r for r in report["results"] if r["mode"] == "end_to_end"]
    if e2e:
        lines += ["", "| backend | batch | threads | end-to-end images/s | model-only images/s | fraction |",
                  "|---|--:|--:|--:|--:|--:|"]
        lines += [f"| {r['backend']} | {r['batch_size']} | {r['threads']} | {r['images_per_s']:g} "
                  f"| {_md(r['model_only_images_per_s'])} | {_md(r['fraction_of_model_only'])} |" for r in e2e]
    return "\n".join(lines) + "\n"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def _md(value: Any) -> str:
    return "-" if value is None else f"{value:g}"
