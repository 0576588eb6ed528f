"""The one report writer: JSON (atomic), Markdown tables and PNG plots, for accuracy and bench results.

Accuracy tables are ``{domain: {model: Top1}}``; bench reports are the dict ``clap-edge bench`` writes.
matplotlib (the [train] extra) is imported only when a plot is drawn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from clap_edge.core.io import atomic_path, atomic_write_text
from clap_edge.core.metrics import Top1

Table = Mapping[str, Mapping[str, Top1]]

__all__ = ["write_json", "markdown", "markdown_table", "table_dict", "plot_table", "bench_markdown_table",
           "plot_bench"]


# ---- shared -----------------------------------------------------------------------

def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON, written atomically (a reader never sees half a file)."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def markdown(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A Markdown table; columns whose index is in ``right`` are right-aligned (numbers)."""
    rule = "|" + "".join("--:|" if i in right else "---|" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
    return Path(path)


# ---- accuracy ----------------------------------------------------------------------

def markdown_table(table: Table, models: list[str] | None = None) -> str:
    """Domains as rows, models as columns, cells ``87.1 [85.4, 88.7]``; a mean row at the bottom."""
    models = models or _models(table)
    rows = [[domain, *(_cell(cells.get(m)) for m in models)] for domain, cells in table.items()]
    means = [sum(c[m].top1 for c in table.values() if m in c) / max(1, sum(m in c for c in table.values()))
             for m in models]
    rows.append(["**mean**", *(f"**{v:.1f}**" for v in means)])
    return markdown(["domain", *models], rows)


def table_dict(table: Table) -> dict[str, dict[str, Any]]:
    return {d: {m: t.as_dict() for m, t in cells.items()} for d, cells in table.items()}


def plot_table(table: Table, path: str | os.PathLike, title: str = "zero-shot top-1 per domain") -> Path:
    """Grouped bars per domain, one per model, with 95% CI whiskers."""
    import numpy as np

    plt = _pyplot()
    models = _models(table)
    domains = list(table)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(domains)), 4))
    x = np.arange(len(domains))
    for i, model in enumerate(models):
        tops = [table[d][model].top1 if model in table[d] else np.nan for d in domains]
        lo = [t - table[d][model].ci95[0] if model in table[d] else 0 for d, t in zip(domains, tops)]
        hi = [table[d][model].ci95[1] - t if model in table[d] else 0 for d, t in zip(domains, tops)]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, tops, width, yerr=[lo, hi], capsize=2, label=model)
    ax.set_xticks(x, domains, rotation=15)
    ax.set_ylabel("top-1 (%); whiskers: 95% CI")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(4, len(models)))
    fig.tight_layout()
    return _save(fig, path)


def _models(table: Table) -> list[str]:
    return list(dict.fromkeys(m for cells in table.values() for m in cells))


def _cell(t: Top1 | None) -> str:
    return "-" if t is None else f"{t.top1:.1f} [{t.ci95[0]:.1f}, {t.ci95[1]:.1f}]"


# ---- bench -------------------------------------------------------------------------

def bench_markdown_table(report: dict[str, Any]) -> str:
    """The model-only and end-to-end rows of a bench report as Markdown tables (for bench/README.md)."""
    # p99 is None below 50 calls; a fraction above 1 is flagged as noise (bench_rows); rates per CPU-second
    model = [[r["backend"], r["precision"], r["batch_size"], r["threads"], f"{r['p50_ms']:g}", _md(r.get("p99_ms")),
              f"{r['images_per_s']:g}", _md(r["speedup_vs_torch"]), _md(r.get("gflops_per_cpu_s", r["gflops_per_s"])),
              _md(r.get("ceiling_gflops_per_s")),
              "noise" if r.get("fraction_flag") else _pct(r.get("fraction_of_ceiling")), _md(r["peak_rss_mb"]),
              _agree(r)] for r in report["results"] if r["mode"] == "model"]
    out = markdown(["backend", "precision", "batch", "threads", "p50 ms", "p99 ms", "images/s", "x torch",
                    "GFLOP/cpu-s", "ceiling", "of ceiling", "peak RSS MB",
                    "top-1 agreement vs fp32 (% of n images)"], model, right=range(2, 13))
    e2e = [[r["backend"], r["batch_size"], r["threads"], f"{r['images_per_s']:g}", _md(r["model_only_images_per_s"]),
            _md(r["fraction_of_model_only"])] for r in report["results"] if r["mode"] == "end_to_end"]
    if e2e:
        out += "\n\n" + markdown(["backend", "batch", "threads", "end-to-end images/s", "model-only images/s",
                                  "fraction"], e2e, right=range(1, 6))
    return out + "\n"


def plot_bench(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: p50 latency, images/s and GFLOP/s vs batch size, one line per backend (model-only rows); the
    GFLOP/s panel draws each measured ceiling as a dashed line in its backend's colour."""
    plt = _pyplot()
    rows = [r for r in report["results"] if r["mode"] == "model"]
    fig, (ax_lat, ax_ips, ax_gf) = plt.subplots(1, 3, figsize=(19, 4.8))
    ceilings = (report["env"].get("ceiling") or {}).get("ceilings", {})
    drawn: list[str] = []
    styles = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))  # one per ceiling: two equal ceilings still differ
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
            drawn.append(key)
            ax_gf.axhline(ceilings[key]["gflops_per_s"], color=color, linestyle=styles[(len(drawn) - 1) % len(styles)],
                          linewidth=1.4, label=f"ceiling {key}: {ceilings[key]['gflops_per_s']:g} GFLOP/s")
    env = report["env"]
    for ax, title, ylabel in ((ax_lat, "p50 latency per batch", "ms"), (ax_ips, "throughput", "images/s"),
                              (ax_gf, "effective GFLOP/s vs measured GEMM ceilings (broken lines)", "GFLOP/s")):
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
    return _save(fig, path)


def _load(env: dict[str, Any]) -> str:
    before, after = env.get("load_average_before"), env.get("load_average_after")
    return f"{before[0]:.1f} -> {after[0]:.1f}" if before and after else "?"


def _agree(row: dict[str, Any]) -> str:
    """Top-1 agreement with the fp32 reference as a percentage of the n images it was measured on."""
    value, n = row.get("top1_agreement_vs_fp32"), row.get("agreement_n_images")
    return "-" if value is None else f"{100 * value:.1f}% of {n}" if n else f"{100 * value:.1f}%"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def _md(value: Any) -> str:
    return "-" if value is None else f"{value:g}"
# ---- alpha grids: {domain: {alpha: {"top1", "ci95", "n", "minus_clip": {"points", "ci95"}}}} ----------------

AlphaGrid = Mapping[str, Mapping[float, Mapping[str, Any]]]


def alpha_grid_markdown(grid: AlphaGrid, chosen: float | None = None) -> str:
    """Domains as rows, alphas as columns: top-1 and, below it, minus CLIP with its paired 95% CI."""
    alphas = sorted({a for cells in grid.values() for a in cells})
    head = [f"**{a:g}**" if a == chosen else f"{a:g}" for a in alphas]
    lines = ["| domain \\ alpha | " + " | ".join(head) + " |", "|---|" + "---|" * len(alphas)]
    for domain, cells in grid.items():
        row = []
        for a in alphas:
            c = cells.get(a)
            if c is None:
                row.append("-")
                continue
            d = c["minus_clip"]
            row.append(f"{c['top1']:.1f}" if a == 0 else
                       f"{c['top1']:.1f} ({d['points']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}])")
        lines.append(f"| {domain} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_alpha_curves(grids: Mapping[str, AlphaGrid], path: str | Path, chosen: Mapping[str, float] | None = None,
                      title: str = "zero-shot top-1 vs alpha (alpha 0 = CLIP)") -> Path:
    """One panel per grid (e.g. per prompt family), one line per domain, 95% CI band; the chosen alpha dashed."""
    plt = _pyplot()
    names = list(grids)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        for domain, cells in grids[name].items():
            alphas = sorted(cells)
            tops = [cells[a]["top1"] for a in alphas]
            line, = ax.plot(alphas, tops, marker="o", ms=3, label=domain)
            ax.fill_between(alphas, [cells[a]["ci95"][0] for a in alphas], [cells[a]["ci95"][1] for a in alphas],
                            color=line.get_color(), alpha=0.12)
        ax.fill_between([], [], [], color="gray", alpha=0.25, label="95% CI (bands)")
        if chosen and name in chosen:
            ax.axvline(chosen[name], color="gray", ls="--", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%); bands: 95% CI")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncols=min(8, max(1, len(labels))))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return _save(fig, path)


# ---- few-shot: the dict of FewShotResult.as_dict() (domain -> k -> key -> cell) ------------------------------

def fewshot_markdown(result: Mapping[str, Any]) -> str:
    """Rows (held-out domain, shots per class), columns CLIP, each head, head minus CLIP (paired 95% CI);
    a mean row per shot count (domains weighed equally)."""
    domains = result["domains"]
    first = next(iter(domains.values()))
    keys = list(next(iter(first.values())))
    heads = [k for k in keys if k != "clip"]
    rows = []
    for domain, by_k in domains.items():
        for k, cells in by_k.items():
            d = [cells[h]["minus_clip"] for h in heads]
            rows.append([domain, k, *(_cell(Top1(c["top1"], tuple(c["ci95"]), c["n"])) for c in cells.values()),
                         *(f"{x['points']:+.1f} [{x['ci95'][0]:+.1f}, {x['ci95'][1]:+.1f}]" for x in d)])
    for k, means in result["mean"].items():
        rows.append(["**mean**", k, *(f"**{means[key]:.1f}**" for key in keys),
                     *(f"**{means[h] - means['clip']:+.1f}**" for h in heads)])
    return markdown(["held-out domain", "shots/class", *keys, *(f"{h} - clip" for h in heads)], rows,
                    right=range(1, 2 + len(keys) + len(heads)))


def plot_fewshot(result: Mapping[str, Any], path: str | os.PathLike,
                 title: str = "few-shot linear probe, leave one domain out") -> Path:
    """One panel per held-out domain: top-1 vs shots per class, one line per feature set, 95% CI bars."""
    plt = _pyplot()
    domains = result["domains"]
    cols = min(4, len(domains))
    rows = -(-len(domains) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.1 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(domains):]:
        ax.set_visible(False)
    for ax, (domain, by_k) in zip(axes.flat, domains.items()):
        ks = [int(k) for k in by_k]
        for key in next(iter(by_k.values())):
            cells = [by_k[str(k)][key] for k in ks]
            tops = [c["top1"] for c in cells]
            err = [[t - c["ci95"][0] for t, c in zip(tops, cells)], [c["ci95"][1] - t for t, c in zip(tops, cells)]]
            ax.errorbar(ks, tops, yerr=err, marker="o", ms=3, capsize=2, label=f"{key} (95% CI)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(f"held out: {domain}", fontsize=9)
        ax.set_xlabel("shots per class and domain", fontsize=8)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("top-1 (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
