"""Accuracy tables: markdown, JSON and a PNG plot, from ``{domain: {model: Top1}}``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from clap_edge.core.io import atomic_path, atomic_write_text
from clap_edge.core.metrics import Top1

Table = Mapping[str, Mapping[str, Top1]]


def markdown_table(table: Table, models: list[str] | None = None) -> str:
    """Domains as rows, models as columns, cells ``87.1 [85.4, 88.7]``; a mean row at the bottom."""
    models = models or _models(table)
    lines = ["| domain | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for domain, cells in table.items():
        row = [_cell(cells.get(m)) for m in models]
        lines.append(f"| {domain} | " + " | ".join(row) + " |")
    means = [sum(c[m].top1 for c in table.values() if m in c) / max(1, sum(m in c for c in table.values()))
             for m in models]
    lines.append("| **mean** | " + " | ".join(f"**{v:.1f}**" for v in means) + " |")
    return "\n".join(lines)


def table_dict(table: Table) -> dict[str, dict[str, Any]]:
    return {d: {m: t.as_dict() for m, t in cells.items()} for d, cells in table.items()}


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def plot_table(table: Table, path: str | Path, title: str = "zero-shot top-1 per domain") -> Path:
    """Grouped bars per domain, one per model, with 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(4, len(models)))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def _models(table: Table) -> list[str]:
    return list(dict.fromkeys(m for cells in table.values() for m in cells))


def _cell(t: Top1 | None) -> str:
    return "-" if t is None else f"{t.top1:.1f} [{t.ci95[0]:.1f}, {t.ci95[1]:.1f}]"


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(grids)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        for domain, cells in grids[name].items():
            alphas = sorted(cells)
            tops = [cells[a]["top1"] for a in alphas]
            line, = ax.plot(alphas, tops, marker="o", ms=3, label=domain)
            ax.fill_between(alphas, [cells[a]["ci95"][0] for a in alphas], [cells[a]["ci95"][1] for a in alphas],
                            color=line.get_color(), alpha=0.12)
        if chosen and name in chosen:
            ax.axvline(chosen[name], color="gray", ls="--", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncols=min(8, max(1, len(labels))))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
