"""``clap-edge demo``: the whole pipeline on the shipped toy world, offline."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("demo")
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="folder for the dataset, bundles, report.md, report.json and plots.")
@click.option("--per-class", type=click.IntRange(min=1), default=60, show_default=True, help="images per class, domain and split.")
@click.option("--steps", type=click.IntRange(min=1), default=8000, show_default=True, help="max CLAP training steps (early stop on).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="inference threads for eval and bench.")
@click.option("--bench-iters", type=click.IntRange(min=1), default=10, show_default=True, help="timed iterations per bench cell.")
@click.option("--json", "as_json", is_flag=True, help="print report.json instead of the summary table.")
def demo(out, per_class, steps, threads, bench_iters, as_json):
    """Generate the toy world, train a CLAP head, export CLIP and CLAP bundles (fp32 + int8),
    evaluate them per domain, benchmark the backends and write OUT/report.md and report.json.

    Runs offline on the tiny CLIP shipped in the package (clap-edge-toy / toyworld).

    \b
    Example:
      clap-edge demo --out demo-out
    """
    from clap_edge.apps.demo import DemoConfig, run_demo

    config = DemoConfig(out=out, per_class=per_class, train_steps=steps, threads=threads, bench_iters=bench_iters)
    report = run_demo(config, say=lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    report_md = Path(out) / "report.md"
    click.echo(f"{click.format_filename(report_md)}:\n")
    click.echo(report_md.read_text(encoding="utf-8"))


COMMANDS = [demo]
