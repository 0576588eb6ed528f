"""The demo's headline across seeds: per-seed CLAP minus CLIP, its spread, and whether each verdict holds.

A paired CI covers the sampling of one test split's images, not the choice of test set, val
set (alpha) or training seed; rerunning the demo on several seeds measures that. This module
turns the demos' ``report.json`` files into that spread and adds it to one report
(``bench/demo_seeds.py`` runs the seeds). numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HEADLINE_KEYS = ("style_isolating_domains", "style_laden_prompts", "id")


def seed_of(report: dict[str, Any]) -> int | dict[str, int]:
    values = set(report["seeds"].values())
    return values.pop() if len(values) == 1 else dict(report["seeds"])


def spread(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per headline line: every seed's difference and verdict, mean, SD and range, and whether the verdict holds."""
    if not reports:
        raise ValueError("no demo reports to compare")
    out: dict[str, Any] = {"seeds": [seed_of(r) for r in reports], "headline": {}, "per_family": {}}
    for key in HEADLINE_KEYS:
        lines = [r["headline"][key] for r in reports if key in r["headline"]]
        if len(lines) != len(reports):
            continue
        points = np.array([g["points"] for g in lines])
        verdicts = [g["verdict"] for g in lines]
        out["headline"][key] = {
            "per_seed": [{"seed": seed_of(r), "alpha": g["alpha"], "n_images": g["n_images"], "points": g["points"],
                          "ci95": g["ci95"], "verdict": g["verdict"]} for r, g in zip(reports, lines)],
            "mean_points": round(float(points.mean()), 2),
            "sd_points": round(float(points.std(ddof=1)), 2) if len(points) > 1 else 0.0,
            "range_points": [round(float(points.min()), 2), round(float(points.max()), 2)],
            "verdict_counts": {v: verdicts.count(v) for v in dict.fromkeys(verdicts)},
            "holds": len(set(verdicts)) == 1,
        }
    for r in reports:
        for family, kinds in r["headline"]["per_family"].items():
            for kind, domains in kinds.items():
                for d in domains:
                    cell = out["per_family"].setdefault(family, {}).setdefault(d, {})
                    cell[kind] = cell.get(kind, 0) + 1
    return out


def spread_markdown(s: dict[str, Any]) -> str:
    """The *Across seeds* section of the demo report."""
    from clap_edge.apps.demo import VERDICT_WORDS

    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [f"## Across seeds ({len(s['seeds'])} runs, seeds {seeds}; each seed sets dataset, training and "
             "bootstrap)", "",
             "| headline | test images per seed | CLAP - CLIP per seed, points [paired 95% CI] | mean (SD) | "
             "verdict on every seed |", "|---|---|---|---|---|"]
    for key, h in s["headline"].items():
        per_seed = "; ".join(f"{p['seed']}: {p['points']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}]"
                             for p in h["per_seed"])
        n = sorted({p["n_images"] for p in h["per_seed"]})
        holds = (f"yes: {VERDICT_WORDS[h['per_seed'][0]['verdict']]}" if h["holds"] else
                 "no: " + ", ".join(f"{VERDICT_WORDS[v]} x{c}" for v, c in h["verdict_counts"].items()))
        lines.append(f"| {key.replace('_', ' ')} | {'/'.join(map(str, n))} | {per_seed} | "
                     f"{h['mean_points']:+.1f} ({h['sd_points']:.1f}) | {holds} |")
    lines += ["", f"Per-domain verdicts over the {len(s['seeds'])} seeds (helps / costs / no effect beyond the CI):",
              ""]
    for family, domains in s["per_family"].items():
        cells = [f"{d} {c.get('helps', 0)}/{c.get('costs', 0)}/{c.get('no_distinguishable_effect', 0)}"
                 for d, c in domains.items()]
        lines.append(f"- {family}: " + "; ".join(cells) + ".")
    return "\n".join(lines)


def attach_spread(report_dir: str | Path, s: dict[str, Any]) -> None:
    """Add the spread to one demo's report.json and re-render its report.md."""
    from clap_edge.apps.demo import _top1_table, render_markdown
    from clap_edge.core.io import atomic_write_text
    from clap_edge.core.report import write_json

    report_dir = Path(report_dir)
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    report["seed_spread"] = s
    table = _top1_table(report["domains"])
    write_json(report_dir / "report.json", report)
    atomic_write_text(report_dir / "report.md", render_markdown(report, table))
