"""`clap-edge classes --set` timed on a base-install-like path (torch blocked), with its parity vs torch.

    python bench/classes_timing.py [--models clap-edge-toy,ViT-B-32] [--n 1000] [--work DIR]
                                   [--out bench/results/classes_timing.json]

Per model: export a bundle with --text-encoder (torch; not timed), then run `clap-edge classes BUNDLE --set @names`
for N generated class names in a subprocess where torch and open_clip cannot be imported, and record its wall and
CPU seconds (the child's rusage). Parity: the class matrix against open_clip + torch's (clap_edge.fuse.class_embeddings)
for the same names (max |d|); for the toy model also top-1 on the toy test set (every domain, 20 images per class and
domain): the bundle re-made torch-free with the toy classes (shuffled) against the torch export, by class name.
clap-edge-toy uses its shipped toyworld weights; ViT-B-32 random weights (open_clip pretrained=None).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
NO_TORCH = ("import sys; sys.modules.update({m: None for m in ('torch', 'open_clip', 'torchvision')}); "
            "from clap_edge.apps.cli import main; main()")
PRETRAINED = {"clap-edge-toy": "toyworld"}
ADJ = ["red", "small", "wooden", "electric", "old", "striped", "golden", "tiny", "rusty", "folding", "café", "Zürich"]
NOUN = ["forklift", "pallet", "chair", "tractor", "kettle", "bicycle", "lamp", "crate", "ladder", "drone", "violin",
        "cactus", "teapot", "scooter", "anvil", "kayak", "umbrella", "camera", "hammer", "saxophone"]


def class_names(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n:
        name = f"{rng.choice(ADJ)} {rng.choice(NOUN)} {len(names)}"
        names.append(name)
    return names


def machine() -> dict:
    from tokenizer_parity import machine as m  # one definition of the machine record

    return m()


def timed_child(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if run.returncode:
        raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{run.stderr[-2000:]}")
    return run, round(wall, 2), round(cpu, 2)


def export(model: str, classes: list[str], out: Path) -> Path:
    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    if not out.exists():
        print(f"exporting {model} with --text-encoder to {out}", file=sys.stderr)
        export_bundle(ExportConfig(out=out, model_name=model, pretrained=PRETRAINED.get(model), classes=classes,
                                   torch_program=False, text_encoder=True))
    return out


def torch_matrix(model: str, names: list[str]) -> np.ndarray:
    from clap_edge.fuse import class_embeddings
    from clap_edge.models import load_model

    loaded = load_model(model, PRETRAINED.get(model))
    return class_embeddings(loaded.model, loaded.tokenizer, names).numpy()


def toy_top1(original: Path, remade: Path) -> dict:
    from clap_edge.runtime.classifier import Classifier
    from clap_edge.toyworld.dataset import generate
    from clap_edge.toyworld.world import DOMAINS

    images = np.concatenate([generate(d, "test", 20)[0] for d in DOMAINS])
    labels = []
    for bundle in (original, remade):
        with Classifier.open(bundle, backend="onnxruntime") as clf:
            labels.append([p.label for p in clf.predict(list(images), top_k=1, batch_size=64)])
    same = sum(a == b for a, b in zip(*labels))
    return {"n_images": len(images), "top1_identical": same, "top1_identical_fraction": same / len(images)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="clap-edge-toy,ViT-B-32")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--work", default="/tmp/clap-edge-classes-bench")
    ap.add_argument("--out", default="bench/results/classes_timing.json")
    args = ap.parse_args()
    from clap_edge.toyworld.world import CLASSES

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = class_names(args.n)
    (work / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    results = {"n_classes": args.n, "command": "clap-edge classes BUNDLE --set @names.txt --out NEW (torch blocked)",
               "models": {}}
    for model in args.models.split(","):
        bundle = export(model, list(CLASSES), work / f"{model}-bundle")
        out = work / f"{model}-{args.n}"
        run, wall, cpu = timed_child([sys.executable, "-c", NO_TORCH, "classes", str(bundle), "--set",
                                      f"@{work / 'names.txt'}", "--out", str(out), "--json"])
        from clap_edge.export.bundle import Bundle

        with Bundle.open(out) as b:
            got = b.class_embeddings()
            templates = len(b.manifest.templates)
        diff = float(np.abs(got - torch_matrix(model, names)).max())
        entry = {"pretrained": PRETRAINED.get(model), "templates": templates, "wall_s": wall, "cpu_s": cpu,
                 "max_abs_diff_vs_torch": diff, "loadavg": os.getloadavg(),
                 "reported_by_cli": {k: json.loads(run.stdout)[k] for k in ("wall_s", "cpu_s")}}
        if model == "clap-edge-toy":
            shuffled = list(CLASSES)
            random.Random(1).shuffle(shuffled)
            remade = work / f"{model}-remade"
            timed_child([sys.executable, "-c", NO_TORCH, "classes", str(bundle), "--set", ",".join(shuffled),
                         "--out", str(remade)])
            entry["toy_test_set"] = toy_top1(bundle, remade)
        results["models"][model] = entry
        print(f"{model}: {args.n} classes in {wall} s wall, {cpu} s CPU; max |d| vs torch {diff:.2e}", file=sys.stderr)
        results["machine"] = machine()
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # after each model: a partial run counts


if __name__ == "__main__":
    main()
