"""``clap-edge bench``: backends x batch sizes on one bundle, interleaved; JSON, PNG and a table."""

from __future__ import annotations

import json
import sys

import click

from clap_edge.apps.cli.exitcodes import SOME_FAILED
from clap_edge.core.errors import ClapEdgeError


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be integers >= 1")
    return sizes


@click.command("bench")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--backends", default=None, help="Comma-separated backends (default: every one installed that can run the bundle).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_int_list, help="Comma-separated batch sizes.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Intra-op threads per backend.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed rounds per batch size.")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="Exact timed rounds per batch size (default: rounds for --budget seconds).")
@click.option("--budget", type=click.FloatRange(min=0), default=15.0, show_default=True,
              help="Wall seconds of timed rounds per batch size (p90/p99 need >= 50 calls).")
@click.option("--min-iters", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed rounds at least, whatever the budget (50 for p90/p99).")
@click.option("--peers", is_flag=True,
              help="Also run the plain tools on the same model (bare ONNX Runtime session, OpenVINO default "
                   "config, open_clip eager), alternated call by call with ours; adds the lead ratios.")
@click.option("--end-to-end", "end_to_end", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image folder: also time files -> predictions through the pipelined path.")
@click.option("--agreement-images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image folder for top-1 agreement vs fp32 (default: the bundle's calibration.npy).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report here (atomically).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a latency/throughput PNG here.")
@click.option("--record", is_flag=True, help="Store the report in the user cache so backend 'auto' picks the fastest.")
@click.option("--openvino-precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Force OpenVINO's inference precision (default: the CPU plugin's best).")
@click.option("--no-ceiling", is_flag=True,
              help="Skip the GEMM ceiling micro-benchmark (a few seconds) and the fraction-of-ceiling columns.")
@click.option("--device", default="cpu", show_default=True,
              help="Device for every backend: cpu or cuda[:index] (torch, torch-compile, aoti, tensorrt; "
                   "onnxruntime also takes tensorrt).")
@click.option("--compile-mode", default=None,
              help="torch.compile mode for torch-compile (e.g. reduce-overhead: CUDA graphs on a GPU).")
@click.option("--quiet", is_flag=True, help="No progress bar and no table.")
def bench(bundle, backends, batch_sizes, threads, warmup, iters, budget, min_iters, peers, end_to_end, agreement_images, json_path, plot_path, record,
          openvino_precision, no_ceiling, device, compile_mode, quiet):
    """Benchmark backends on BUNDLE: p50/p90/p99 latency, images/s, peak RSS, speed-up vs torch,
    GFLOP/s and top-1 agreement vs fp32, with the backends interleaved round by round. Each row's
    GFLOP/s is also given as a fraction of its library's measured large-GEMM ceiling at its precision,
    and its speed as a fraction of the same library running only the model's own matrix products
    ("of GEMMs": same weights and shapes, so it shares the model's memory traffic). Rates, ratios and fractions use process CPU time (they hold on a busy machine); the machine's load
    average is recorded with every row.

    \b
    Example:
      clap-edge bench my-bundle --backends torch,onnxruntime,onnxruntime-int8,openvino \\
          --batch-sizes 1,8,32 --threads 1 --json bench.json --plot bench.png
      clap-edge bench my-bundle --backends onnxruntime,openvino --peers --batch-sizes 1 --min-iters 50
    """
    from clap_edge.export.bundle import Bundle
    from clap_edge.apps.bench import BenchConfig, preprocess_folder, record_bench, run_bench
    from clap_edge.core.report import plot_bench, write_json

    from clap_edge.apps.cli.checks import check_output_file

    for option, path in (("--json", json_path), ("--plot", plot_path)):  # before minutes of timing, not after
        if path:
            check_output_file(path, option)
    names = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    options = {"openvino": {"precision": openvino_precision}} if openvino_precision else {}
    if compile_mode:
        options.update({spec: {"mode": compile_mode} for spec in (names or ["torch-compile"])
                        if spec.split(":")[0] == "torch-compile"})
    cfg = BenchConfig(bundle=bundle, backends=names, batch_sizes=batch_sizes, threads=threads, warmup=warmup,
                      iters=iters, budget_s=budget, min_iters=min_iters, peers=peers, end_to_end=end_to_end, backend_options=options, ceiling=not no_ceiling, device=device,
                      agreement=preprocess_folder(Bundle.open(bundle), agreement_images) if agreement_images else None)
    report = run_bench(cfg, progress=not quiet)
    if not report["results"]:
        raise ClapEdgeError(f"no backend produced a result: {json.dumps(report.get('errors', {}))}")
    if json_path:
        write_json(json_path, report)
    if plot_path:
        plot_bench(report, plot_path)
    if record:
        path = record_bench(report, Bundle.open(bundle))
        click.echo(f"recorded for backend 'auto': {path}", err=True)
    if not quiet:
        _print_table(report)
    if not json_path and quiet:
        click.echo(json.dumps(report, indent=2))
    if report.get("errors"):
        # Some backend (or batch size) failed, e.g. a tampered model file: the others were still measured.
        sys.exit(SOME_FAILED)


def _print_table(report: dict) -> None:
    from rich.table import Table

    from clap_edge.apps.console import stdout_console

    env = report["env"]
    load = env.get("load_average_before"), env.get("load_average_after")
    table = Table(title=f"{env['bundle']['model_name']} on {env['cpu_model']} ({env['threads']} thread(s)), "
                        f"load {_load(load[0])} -> {_load(load[1])}; x base: {env.get('speedup_baseline') or '-'}")
    columns = ["backend", "precision", "mode", "batch", "n", "p50 ms", "p99 ms", "cpu ms", "img/cpu-s", "x base",
               "x peer", "GF/cpu-s", "ceiling", "of ceil.", "of GEMMs", "of peak", "load", "RSS MB", "top-1|e2e"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("backend", "precision", "mode") else "right")
    for r in report["results"]:
        model = r["mode"] == "model"
        table.add_row(r["backend"], str(r.get("precision", "")), r["mode"], str(r["batch_size"]), _f(r.get("iters")),
                      _f(r.get("p50_ms")), _f(r.get("p99_ms")), _f(r.get("cpu_p50_ms")),
                      _f(r.get("images_per_cpu_s") if model else r["images_per_s"]), _f(r.get("speedup_vs_torch")),
                      _f(r.get("vs_best_peer")), _f(r.get("gflops_per_cpu_s")), _f(r.get("ceiling_gflops_per_s")),
                      _fraction(r), _model_gemm_fraction(r), _pct(r.get("fraction_of_peak")),
                      "-" if not r.get("load_1min") else "{:.1f}-{:.1f}".format(*r["load_1min"]),
                      _f(r.get("peak_rss_mb")),
                      _agree_pct(r.get("top1_agreement_vs_fp32")) if model else _f(r.get("fraction_of_model_only")))
    stdout_console(min_width=180).print(table)
    for batch, lead in (report.get("lead") or {}).items():
        click.echo(f"batch {batch}: best clap-edge {lead['best_clap_edge']} / best peer {lead['best_peer']} = "
                   f"{lead['ratio']:.2f}x (images per CPU-second)", err=True)
    for name, error in report.get("errors", {}).items():
        click.secho(f"{name}: {error.splitlines()[0]}", fg="yellow", err=True)


def _fraction(r: dict) -> str:
    if r.get("fraction_flag"):
        return f"noise ({r['fraction_of_ceiling_raw']:.2f})"
    return _pct(r.get("fraction_of_ceiling"))


def _model_gemm_fraction(r: dict) -> str:
    if r.get("model_gemms_flag"):
        return f"noise ({r['fraction_of_model_gemms_raw']:.2f})"
    return _pct(r.get("fraction_of_model_gemms"))


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _load(value) -> str:
    return f"{value[0]:.1f}" if value else "?"


def _f(value) -> str:
    return "-" if value is None else f"{value:g}"


def _agree_pct(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def ceiling_reason(row: dict, env: dict) -> str | None:
    """Why a model row has no ceiling ("-" in the table), or None when it has one."""
    if row.get("ceiling_gflops_per_s") is not None:
        return None
    ceiling = env.get("ceiling")
    if ceiling is None:
        return "not measured (--no-ceiling)"
    if ceiling.get("error"):
        return f"the ceiling process failed: {str(ceiling['error']).splitlines()[0]}"
    from clap_edge.apps.ceiling import ceiling_key

    key = ceiling_key(row["backend"], row.get("precision"))
    if key is None:
        return f"no GEMM ceiling is measured for {row['backend']} at {row.get('precision') or 'this precision'}"
    error = (ceiling.get("errors") or {}).get(key)
    return f"ceiling {key} failed: {str(error).splitlines()[0]}" if error else f"ceiling {key} has no sample"


def _caption(report: dict) -> str:
    """What the columns mean where a number alone misleads: agreement's n, e2e, and every "-" ceiling."""
    rows = [r for r in report["results"] if r["mode"] == "model"]
    n = next((r.get("agreement_n_images") for r in rows if r.get("agreement_n_images")), None)
    reference = next((r.get("agreement_reference") for r in rows if r.get("agreement_reference")), "fp32")
    lines = [f"top-1 (%): images whose top-1 class equals {reference}'s (fp32), of {n} (the bundle's calibration "
             "batch, or --agreement-images); a small n, not a test-set accuracy" if n else
             "top-1 (%): not measured (no calibration batch in the bundle and no --agreement-images)",
             "e2e rows (top-1|e2e column): end-to-end images/s as a fraction of model-only"]
    reasons = {f"{r['backend']} ({r.get('precision')})": ceiling_reason(r, report["env"]) for r in rows}
    lines += [f"ceiling - for {name}: {why}" for name, why in reasons.items() if why]
    return "\n".join(lines)

COMMANDS = [bench]
