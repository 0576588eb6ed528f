"""The authors' training details vs ours, on the toy world (not a test): which default to ship.

Each variant trains the demo's CLAP head (toy CLIP, toy vocabulary, 8 classes, paper settings)
with one option changed, then scores the demo's alpha grid on the demo's dataset (same seed,
same images) with alpha chosen on validation by the demo's objective. Per variant and
training seed it records the head's strength (Frobenius norm of projection.weight @
linear.weight), the steps run, the chosen alphas and the demo's headline numbers (CLAP minus
CLIP with paired CIs on the style-isolating domains, on style-laden prompts and on ``id``).

    python bench/clap_options.py                     # writes bench/results/clap_options.json
    python bench/clap_options.py --seeds 0 --per-class 20 --out /tmp/o.json
    python bench/clap_options.py --variants 6,7,8 --merge   # run some variants, keep the others' rows

A variant may change the alpha objective too (``alpha_objective``); the others use ``--objective``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from clap_edge.apps.demo import DemoConfig, _alpha_grid, _make_dataset, _torch_threads, _train_head, headline
from clap_edge.core.io import atomic_write_text

DEFAULT_OUT = Path(__file__).parent / "results" / "clap_options.json"
# name -> DemoConfig overrides
VARIANTS = {
    "ours (balanced, noise per text, final weights)": {},
    "shuffle batching": {"batching": "shuffle"},
    "noise shared per batch (pool 256)": {"noise_sharing": "batch-pool", "noise_pool": 256},
    "keep best window": {"keep": "best"},
    "reordered view without article": {"reorder_article": False},
    "authors (shuffle, shared noise, best window)": {"batching": "shuffle", "noise_sharing": "batch-pool",
                                                     "noise_pool": 256, "keep": "best"},
    "noise fresh every step, shared by the batch (authors, exact)": {"noise_sharing": "batch"},
    "alpha: the authors' grid and rule": {"alpha_objective": "authors"},
    "authors, exact (shuffle, fresh shared noise, best window, their alpha rule)": {
        "batching": "shuffle", "noise_sharing": "batch", "keep": "best", "alpha_objective": "authors"},
}


def head_strength(path: Path) -> float:
    from clap_edge.head import CLAPHead

    head = CLAPHead.load(path)
    return float((head.projection.weight @ head.linear.weight).norm())


def run_variant(data: Path, work: Path, base: DemoConfig, overrides: dict, seed: int) -> dict:
    config = dataclasses.replace(base, **overrides, seeds={**base.seeds, "train": seed})
    start = time.perf_counter()
    with _torch_threads(1):
        head_path, summary = _train_head(work / "head.safetensors", config)
        train_s = time.perf_counter() - start
        grid = _alpha_grid(data, head_path, config)
    h = headline(grid, config)
    return {"seed": seed, "train_s": round(train_s, 1), "steps_run": summary["steps_run"],
            "kept_step": summary["kept_step"], "head_strength": round(head_strength(head_path), 4),
            "alphas": {k.split("/")[1]: a for k, a in grid.alphas.items()},
            "style_isolating_domains": h["style_isolating_domains"], "style_laden_prompts": h["style_laden_prompts"],
            "id": h["id"]}


def _command(args: argparse.Namespace) -> str:
    text = f"python bench/clap_options.py --seeds {args.seeds} --per-class {args.per_class} " \
           f"--objective {args.objective}"
    return text + (f" --variants {args.variants}" if args.variants else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="training seeds (comma list)")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--objective", default="worst")
    parser.add_argument("--variants", default=None, help="comma list of variant indices (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--merge", action="store_true", help="keep the rows of variants not run from --out")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = list(VARIANTS)
    if args.variants:
        names = [names[int(i)] for i in args.variants.split(",")]
    base = DemoConfig(per_class=args.per_class, alpha_objective=args.objective)
    results: dict[str, list[dict]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = _make_dataset(Path(tmp) / "data", base)
        for name in names:
            results[name] = []
            for seed in seeds:
                row = run_variant(data, Path(tmp), base, VARIANTS[name], seed)
                results[name].append(row)
                print(f"{name} seed {seed}: strength {row['head_strength']}, steps {row['steps_run']}, "
                      f"swap {row['style_isolating_domains']['points']:+.1f}, "
                      f"S {row['style_laden_prompts']['points']:+.1f}, id {row['id']['points']:+.1f}", flush=True)
                if args.merge:  # keep what is done: a long run on a loaded machine may be cut short
                    _write(args, base, {name: results[name]}, load_before, [name])
    _write(args, base, results, load_before, names)


def _write(args: argparse.Namespace, base: DemoConfig, results: dict, load_before, names: list[str]) -> None:
    from clap_edge.core.machine import cpu_info

    model, flags = cpu_info()
    runs = {name: {"command": _command(args), "cpu": model, "cpu_flags": [f for f in flags if "avx" in f or "amx" in f],
                   "load_average_before": load_before, "load_average_after": os.getloadavg()} for name in names}
    previous = json.loads(args.out.read_text()) if args.merge and args.out.is_file() else {}
    results = {**previous.get("variants", {}), **results}
    runs = {**previous.get("runs", {}), **runs}
    report = {
        "runs": runs,
        "command": "python bench/clap_options.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                             (("seeds", args.seeds), ("per_class", args.per_class),
                                                              ("objective", args.objective))),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "dataset": {"per_class": args.per_class, "seed": base.seeds["dataset"]},
        "alpha_objective": args.objective,
        "variants": results,
    }
    for key in ("command", "machine", "dataset", "alpha_objective"):  # the first run's, which most rows are from
        report[key] = previous.get(key, report[key])
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
