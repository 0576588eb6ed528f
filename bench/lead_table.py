"""The lead over the peers from `clap-edge bench --peers` JSONs: best clap-edge row / best peer row, three ways.

Per JSON (threads) and batch size, in images per CPU-second:
- ``any``:   the best row at any precision (what ``report["lead"]`` holds)
- ``floor``: int8 rows count only when their top-1 agreement with fp32 meets ``INT8_AGREEMENT_FLOOR``
             (the one floor `auto`, the tests and the README use)
- ``equal``: float rows only (fp32 / bf16 / fp16) against float peer rows: no quantisation on either side

    python bench/lead_table.py bench/results/vit-b-32_peers_1thread.json bench/results/vit-b-32_peers_2threads.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clap_edge.runtime.bench_record import INT8_AGREEMENT_FLOOR

FLOAT = {"fp32", "bf16", "fp16"}


def _rate(row: dict[str, Any]) -> float:
    return row.get("images_per_cpu_s") or 0.0


def _counts(row: dict[str, Any], how: str) -> bool:
    if how == "any":
        return True
    if row.get("precision") in FLOAT:
        return True
    return how == "floor" and (row.get("top1_agreement_vs_fp32") or 0.0) >= INT8_AGREEMENT_FLOOR


def leads(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    rows = [r for r in report["results"] if r.get("mode", "model") == "model"]
    out: dict[int, dict[str, Any]] = {}
    for batch in sorted({r["batch_size"] for r in rows}):
        at = [r for r in rows if r["batch_size"] == batch]
        out[batch] = {}
        for how in ("any", "floor", "equal"):
            ours = [r for r in at if not r["backend"].startswith("peer:") and _counts(r, how)]
            peers = [r for r in at if r["backend"].startswith("peer:") and _counts(r, how)]
            if ours and peers:
                best, peer = max(ours, key=_rate), max(peers, key=_rate)
                out[batch][how] = {"ours": f"{best['backend']} ({best['precision']})", "peer":
                                   f"{peer['backend']} ({peer['precision']})",
                                   "ratio": round(_rate(best) / _rate(peer), 3)}
    return out


def markdown(path: Path) -> str:
    report = json.loads(path.read_text())
    rows = [r for r in report["results"] if r.get("mode", "model") == "model"]
    names = list(dict.fromkeys(f"{r['backend']} ({r['precision']})" for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    lines = [f"{path.name}: threads {report['config'].get('threads')}, load "
             f"{report['env'].get('load_average_before')} -> {report['env'].get('load_average_after')}", "",
             "| row | " + " | ".join(f"batch {b}: img/cpu-s (img/s)" for b in batches) + " | agreement |",
             "|---|" + "--:|" * (len(batches) + 1)]
    for name in names:
        cells, agree = [], ""
        for b in batches:
            row = next((r for r in rows if f"{r['backend']} ({r['precision']})" == name and r["batch_size"] == b), None)
            cells.append(f"{row['images_per_cpu_s']} ({row['images_per_s']})" if row else "-")
            if row and row.get("top1_agreement_vs_fp32") is not None:
                agree = f"{row['top1_agreement_vs_fp32']} / {row.get('agreement_n_images')}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {agree} |")
    lines.append("")
    for b, by in leads(report).items():
        lines.append(f"batch {b}: " + "; ".join(f"{how} **{v['ratio']}x** ({v['ours']} vs {v['peer']})"
                                                for how, v in by.items()))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="print the leads as JSON instead of markdown")
    a = p.parse_args()
    if a.json:
        print(json.dumps({str(r): leads(json.loads(r.read_text())) for r in a.reports}, indent=1))
    else:
        print("\n\n".join(markdown(r) for r in a.reports))


if __name__ == "__main__":
    main()
