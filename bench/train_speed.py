"""Training speed: clap-edge's pre-encoding trainer vs the authors' encode-every-step loop (not a test).

Both sides train the same CLAP head with the paper's settings (7 PACS classes, batch 8,
Adam lr 1e-4, tau 0.5 / 1.0, noise context 4 x N(0, 0.02^2)) on a randomly initialised
ViT-B-32, one intra-op thread each. Ours runs all 8000 steps (early stop disabled for the
timing; the step where it would have stopped is reported too). The baseline encodes the
prompts, the noisy views and the class names through the frozen text tower at every step,
padded to the full context, as the authors' code does; it is timed over --baseline-steps
steps and scaled to 8000.

    python bench/train_speed.py                    # writes bench/results/train_speed.json
    python bench/train_speed.py --model clap-edge-tiny --steps 200 --baseline-steps 20 --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from clap_edge.core.io import atomic_write_text
from clap_edge.models import load_model
from clap_edge.text_encoder import NoiseTextEncoder
from clap_edge.train import EarlyStopper, Schedule, TrainConfig, clap_loss, prepare_class_names, train_head

PACS = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
DEFAULT_OUT = Path(__file__).parent / "results" / "train_speed.json"


def time_ours(loaded, config: TrainConfig) -> dict:
    start = time.perf_counter()
    _, result = train_head(loaded, PACS, config)
    total = time.perf_counter() - start
    return {"total_s": round(total, 2), "encode_s": round(result.encode_seconds, 2),
            "head_loop_s": round(result.loop_seconds, 2), "texts_encoded": result.encoded_texts,
            "steps": result.steps_run, "final_loss": round(result.final_loss, 4),
            "early_stop_would_stop_at_step": _early_stop_step(result.window_means, config)}


def time_baseline(loaded, config: TrainConfig, steps: int, warmup: int = 2) -> dict:
    """The authors' loop: every step tokenizes and encodes 3 x batch texts at full context length."""
    records = prepare_class_names(PACS, loaded, config)
    schedule = Schedule(records, config)
    encoder = NoiseTextEncoder(loaded.model)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    from clap_edge.head import CLAPHead, HeadConfig

    head = CLAPHead(HeadConfig(in_dim=loaded.embed_dim, latent_dim=config.latent_dim))
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        batch = schedule.batch()
        with torch.no_grad():
            t = loaded.model.encode_text(loaded.tokenizer([p.text() for p, _, _ in batch]))
            c = loaded.model.encode_text(loaded.tokenizer([p.class_name for p, _, _ in batch]))
            tokens = loaded.tokenizer([v.text() for _, v, _ in batch])
            noise = torch.randn(len(batch), config.noise_ctx, encoder.width) * config.noise_std  # fresh each step
            where = [rng.choice(config.noise.positions) for _ in batch]
            v = encoder.encode(tokens, noise, encoder.insert_positions(tokens, where), cut=False)
        loss = clap_loss(head, t, v, c, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    per_step = (time.perf_counter() - start) / steps
    return {"steps_measured": steps, "per_step_s": round(per_step, 4),
            "texts_encoded_per_step": 3 * config.batch_size, "padded_length": loaded.context_length,
            "total_s_scaled": round(per_step * config.steps, 1)}


def _early_stop_step(window_means: list[float], config: TrainConfig) -> int | None:
    stopper = EarlyStopper(TrainConfig(window=1, patience=config.patience, min_delta=config.min_delta))
    for i, mean in enumerate(window_means):
        if stopper.update([mean]):
            return (i + 1) * config.window
    return None


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--baseline-steps", type=int, default=100)
    parser.add_argument("--noise-pool", type=int, default=TrainConfig.noise_pool)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--add-noise-pool", action="store_true",
                        help="keep --out's baseline and results; time ours once more with --noise-pool and add it")
    args = parser.parse_args()
    if args.add_noise_pool:
        return add_noise_pool_run(args)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model(args.model)  # random init: no weights can be downloaded here
    config = TrainConfig(steps=args.steps, noise_pool=args.noise_pool, early_stop=False, progress=False)
    report = {"benchmark": "CLAP head training, ours (pre-encoded cache) vs encode-every-step baseline",
              "note": "measured on a shared 2-core machine (other jobs running); torch.set_num_threads(1) both sides",
              "machine": machine(), "threads": args.threads, "model": f"{args.model} (random init)",
              "classes": PACS, "settings": {k: v for k, v in config.settings().items() if k != "device"}}
    report["baseline"] = time_baseline(loaded, config, args.baseline_steps)
    print("baseline", report["baseline"], flush=True)
    report["ours"] = time_ours(loaded, config)
    print("ours", report["ours"], flush=True)
    report["speedup"] = round(report["baseline"]["total_s_scaled"] / report["ours"]["total_s"], 1)
    report["machine"]["load_average_end"] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"speedup {report['speedup']}x -> {args.out}")


def add_noise_pool_run(args: argparse.Namespace) -> None:
    """Time ours with another noise pool K against the baseline already measured in ``args.out``."""
    report = json.loads(args.out.read_text())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model(args.model)
    config = TrainConfig(steps=args.steps, noise_pool=args.noise_pool, early_stop=False, progress=False)
    ours = time_ours(loaded, config)
    ours["speedup"] = round(report["baseline"]["total_s_scaled"] / ours["total_s"], 1)
    ours["load_average_end"] = os.getloadavg()
    report.setdefault("ours_other_noise_pools", {})[str(args.noise_pool)] = ours
    print(f"noise pool {args.noise_pool}:", ours, flush=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
