"""The attack section of the eval and demo reports: top-1 under attack per domain, CLAP minus CLIP with paired CIs."""

from __future__ import annotations

from typing import Any

from clap_edge.core.metrics import Top1


def attacks_markdown(result: dict[str, Any], table: dict[str, dict[str, Top1]], heading: str = "###") -> str:
    """``result``: ``RobustResult.as_dict()`` (plus ``per_class``); ``table``: its Top1 table."""
    from clap_edge.core.report import markdown, markdown_table

    specs = result["attacks"]
    n = sorted({t.n for cells in table.values() for t in cells.values()})
    alphas = ", ".join(f"{h} alpha {a:g}" for h, a in result["alphas"].items()) or "CLIP only"
    lines = [f"{heading} attacks: zero-shot top-1 under white-box L-inf attacks (prompt {result['prompt']}, "
             f"{alphas}; {'/'.join(map(str, n))} test images per domain; 95% paired bootstrap CI)", "",
             "Attacks (the authors' settings; pixels in [0, 1], normalisation inside the model; loss on the "
             f"{result['scores']}): " + "; ".join(
                 f"{a['name']} {a['steps']} step(s) of {a['step_size']:g}, eps {a['eps']:g}, "
                 f"{'CW margin' if a['loss'] == 'cw' else 'cross-entropy'} loss"
                 f"{', random start' if a['random_start'] else ''}" for a in specs) + ".", "",
             markdown_table(table)]
    for head, by_attack in result["clap_minus_clip"].items():
        attacks = list(by_attack)
        domains = list(next(iter(by_attack.values())))
        rows = [[d, *(_diff(by_attack[a][d]) for a in attacks)] for d in domains]
        lines += ["", f"{head} minus CLIP (points, paired 95% CI):", "", markdown(["domain", *attacks], rows)]
    return "\n".join(lines)


def _diff(d: dict[str, Any]) -> str:
    return f"{d['points']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"
