"""``clap-edge demo``: the whole pipeline on the shipped toy world, offline."""

from __future__ import annotations

import json
import click


@click.command("demo")
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="folder for the dataset, bundles, report.md, report.json and plots.")
@click.option("--per-class", type=click.IntRange(min=1), default=60, show_default=True,
              help="validation images per class and domain.")
@click.option("--test-per-class", type=click.IntRange(min=1), default=250, show_default=True,
              help="test images per class and domain (8 classes: 2000 per domain).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the toy dataset, the head's training and the bootstrap.")
@click.option("--steps", type=click.IntRange(min=1), default=8000, show_default=True, help="max CLAP training steps (early stop on).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="inference threads for eval and bench.")
@click.option("--bench-iters", type=click.IntRange(min=1), default=10, show_default=True, help="timed iterations per bench cell.")
@click.option("--alpha-objective", default="worst", show_default=True,
              help="what alpha maximises on val: pooled, worst (the worst domain) or a domain name.")
@click.option("--batching", type=click.Choice(["balanced", "shuffle"]), default="balanced", show_default=True,
              help="CLAP training batches (see `clap-edge train --help`).")
@click.option("--noise-sharing", type=click.Choice(["text", "batch"]), default="text", show_default=True,
              help="noise draw per view text, or one per step (the authors').")
@click.option("--noise-pool", type=click.IntRange(min=1), default=1, show_default=True,
              help="pre-encoded noise draws (per text, or shared ones with --noise-sharing batch).")
@click.option("--keep", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="final head weights, or those of the best loss window.")
@click.option("--bench/--no-bench", default=True, show_default=True, help="run the backend bench step.")
@click.option("--headline-only", is_flag=True,
              help="stop after the alpha grid: report.json with the headline only (for runs over many seeds).")
@click.option("--json", "as_json", is_flag=True, help="print report.json instead of the summary.")
def demo(out, per_class, test_per_class, seed, steps, threads, bench_iters, alpha_objective, batching, noise_sharing,
         noise_pool, keep, bench, headline_only, as_json):
    """Generate the toy world, train a CLAP head, report top-1 per domain, prompt family and alpha
    (CLAP minus CLIP with paired CIs; alpha chosen on val), export CLIP and CLAP bundles (fp32 +
    int8), evaluate them through the runtime, benchmark the backends; write OUT/report.md (every
    table), report.json, alpha.png, accuracy.png and bench.png, and print a short summary.

    Runs offline on the tiny CLIP shipped in the package (clap-edge-toy / toyworld); needs the
    [train] extra. Progress goes to stderr.

    \b
    Example:
      clap-edge demo --out demo-out
      clap-edge demo --out demo-seed1 --seed 1
    """
    from clap_edge.apps.cli.checks import check_output_dir, require_extra

    require_extra("demo", "train")  # before anything is written (the dataset alone is ~27 MB)
    check_output_dir(out)
    from clap_edge.apps.demo import DemoConfig, run_demo
    from clap_edge.apps.demo_summary import summary
    from clap_edge.apps.progress import progress_bar

    config = DemoConfig.seeded(seed, out=out, per_class=per_class, test_per_class=test_per_class, train_steps=steps,
                               threads=threads, bench_iters=bench_iters, alpha_objective=alpha_objective,
                               batching=batching, noise_sharing=noise_sharing, noise_pool=noise_pool, keep=keep, bench=bench,
                               headline_only=headline_only)
    report = run_demo(config, say=lambda msg: click.echo(msg, err=True), bars=progress_bar)
    if as_json or headline_only:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(summary(report, out))


COMMANDS = [demo]
