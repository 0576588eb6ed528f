"""What ``clap-edge demo`` prints on stdout: the headline with its CIs and every file the demo wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What each file the demo writes shows (the summary names them; files other steps add are listed too).
OUTPUT_FILES = {"report.md": "every table", "report.json": "every number",
                "alpha.png": "top-1 vs alpha per prompt family, 95% CI bands",
                "accuracy.png": "bundle top-1 per domain, 95% CI whiskers",
                "bench.png": "backend latency / throughput vs batch size"}


def summary(report: dict[str, Any], out: str | Path) -> str:
    """The few lines the demo prints on stdout: the headline with its CIs, and every file it wrote."""
    h = report["headline"]
    lines = ["CLAP minus CLIP, toy-world test split (top-1 points, paired 95% bootstrap CI):"]
    rows = [("style-isolating domains", h["style_isolating_domains"]), ("style-laden prompts (S)",
                                                                      h.get("style_laden_prompts")),
            ("in distribution (id)", h["id"])]
    for label, g in rows:
        if g is not None:
            lines.append(f"  {label:<26} {g['family']:>2} alpha {g['alpha']:<5g} {g['clip_top1']:5.1f} -> "
                         f"{g['clap_top1']:5.1f}  {g['points']:+.1f} points [{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}]")
    agreement = [v.get("agreement_vs_fp32") for cells in report["domains"].values() for v in cells.values()]
    agreement = [a for a in agreement if a is not None]
    if agreement:
        lines.append(f"  int8 bundles predict fp32's class for {min(agreement):.1f}-{max(agreement):.1f}% of the "
                     "images per domain")
    out = Path(out)
    names = [n for n in OUTPUT_FILES if (out / n).exists()]
    names += sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".md", ".json") and p.name not in names)
    lines.append(f"wrote {out}/:")
    lines += [f"  {n:<14} {OUTPUT_FILES.get(n, '')}".rstrip() for n in names]
    return "\n".join(lines)


__all__ = ["OUTPUT_FILES", "summary"]
