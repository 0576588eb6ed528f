"""Im.Aug: the authors' own training code next to ``clap-edge train --method imaug``, same toy data (not a test).

What runs. The authors' code (YichaoCai1/CLAP at AUTHORS_COMMIT: ``train_clap.py``, ``main/trainer.py``,
``main/networks.py``, ``utils/``) is NOT copied into this repository: it is read at run time from a
checkout or a git directory of theirs (``--authors-repo``; ``git archive`` of the pinned commit into a
temporary folder) and its entry script ``train_clap.py`` runs unchanged, on a config that is the released
``runs/Results_ImgAug_ViTB/PACS_ImgAug/config.yml`` with the adaptations below.

What was changed to feed it the toy CLIP and toy images, and why (nothing else):

1. ``import clip`` (OpenAI's package; not installed, and it only loads OpenAI weights): a stand-in module
   whose ``clip.load`` returns the shipped toy CLIP (open_clip ``clap-edge-toy``/``toyworld``) with the
   attributes their trainer reads (``visual.input_resolution``, ``text_projection``, ``dtype``), and whose
   ``clip.tokenize`` is the toy tokenizer (context 24, not 77).
2. ``accelerate.Accelerator``: ``prepare`` returns its argument (single CPU process: what accelerate does).
3. ``torch.utils.tensorboard.SummaryWriter`` (tensorboard not installed): a writer into a temporary
   ``log_dir`` that drops scalars; ``nltk`` (used only by their EDA text augmentation, off): an empty module.
4. ``DataLoader(num_workers=16)`` -> ``num_workers=0`` (a 2-core machine; also keeps the run seeded).
5. Config: ``clip_name`` toy, ``out_dim`` 64 (the toy's embedding width; ViT-B/16's is 512), the toy
   classes, ``prompts_path`` / ``images_path`` pointing at the toy template images written in their
   layout (``<class>/<prompt>/<prompt>_1.png``, the toy renderer standing in for ``gen_images.py``),
   ``noise_len`` 0 (the psi loss never uses text; their noise code assumes OpenAI CLIP's sequence-first
   transformer), ``manual_seed`` the run's seed, ``total_steps`` from ``--steps``.
6. ``np.Inf`` (their ``EarlyStopping``; removed in NumPy 2, installed here): set to ``np.inf``.
7. Instrumentation: their InfoNCE loss module is wrapped to record each step's loss value (unchanged).

Ours runs ``clap_edge.imaug.train_imaug_head`` on the same image folder with its defaults (the same
settings). Both heads are then scored on one common objective (the same seeded augmented pairs of the
same images, NT-Xent at tau 0.5, mean over batches of 8) and for zero-shot accuracy on the toy dataset
next to a CLAP (beta, text-trained) head, alpha chosen on val by the authors' rule.

    python bench/imaug_vs_authors.py                          # writes bench/results/imaug_vs_authors.json
    python bench/imaug_vs_authors.py --seeds 1 --steps 100 --out /tmp/x.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from clap_edge.core.io import atomic_write_text

AUTHORS_COMMIT = "d91a68032dd8f8ae284990d1e88c2d22a0dc352a"
DEFAULT_REPO = "/work/.mirror/YichaoCai1+CLAP/repo"
DEFAULT_OUT = Path(__file__).parent / "results" / "imaug_vs_authors.json"
STILL_CHANGING = {"noise_len": 0, "clip_name": "clap-edge-toy", "out_dim": 64}
# runs/Results_ImgAug_ViTB/PACS_ImgAug/config.yml, as released (python-object tags written as the strings
# their Args evaluates)
PACS_IMAUG_CONFIG = {
    "activation": "torch.nn.SiLU", "augmentations": {"crop": [0.64, 1.0], "hflip": 0, "mask": [0.0, 0.25, 8, 16],
                                                     "perspective": 0.0},
    "batch_size": 8, "check_frequency": 480, "drop_rate_psi_n_beta": 0, "drop_rate_theta": 0,
    "early_stop": {"delta": 0.01, "patience": 5}, "latent_dim": 256, "learning_rate": 0.0001, "load_weights": None,
    "log_frequency": 50, "noise_len": 2, "optimizer": "torch.optim.Adam", "out_dim": 512,
    "prompt_aug_params": {"art_style": 0, "eda": False, "img_type": 0, "object_color": 0.5, "object_size": 0.5,
                          "replace": False, "reverse": 0.5},
    "repeat": 0, "scale": 1, "scale_coef": 1, "shuffle": True, "std": 0.02, "tau_cm": 0.5, "tau_cnt": 1,
    "tau_img": 0.5, "tau_txt": 0.5, "total_steps": 8000, "weight_decay": 0, "weights_path": None,
    "which_network": ["psi"],
}


# ---- the authors' code, unchanged, with the stand-ins listed above ----------------------------------


def extract_authors(repo: Path, dest: Path) -> Path:
    """Their files at AUTHORS_COMMIT into ``dest`` (``repo``: a checkout or a bare git directory)."""
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", AUTHORS_COMMIT, "train_clap.py", "main",
                              "utils"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def install_stand_ins(loaded, log_dir: Path) -> None:
    class ToyClip(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.visual = model, model.visual
            self.visual.input_resolution = int(loaded.preprocess_cfg.size[0])
            self.dtype = torch.float32

        @property
        def text_projection(self):
            return self.model.text_projection

        def encode_text(self, tokens):
            return self.model.encode_text(tokens)

        def encode_image(self, images):
            return self.model.encode_image(images)

    clip = types.ModuleType("clip")
    clip.load = lambda name, device="cpu": (ToyClip(loaded.model).to(device), None)
    clip.tokenize = lambda text: loaded.tokenizer([text] if isinstance(text, str) else text)
    clip.simple_tokenizer = types.SimpleNamespace(SimpleTokenizer=lambda: None)
    accelerate = types.ModuleType("accelerate")
    accelerate.Accelerator = lambda: types.SimpleNamespace(prepare=lambda x: x)
    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = lambda: types.SimpleNamespace(log_dir=str(log_dir), add_scalar=lambda *a, **k: None)
    nltk, corpus = types.ModuleType("nltk"), types.ModuleType("nltk.corpus")
    corpus.wordnet = None
    if not hasattr(np, "Inf"):  # NumPy 2 removed the alias their EarlyStopping uses
        np.Inf = np.inf
    sys.modules.update({"clip": clip, "accelerate": accelerate, "torch.utils.tensorboard": board, "nltk": nltk,
                        "nltk.corpus": corpus})


def run_authors(code: Path, data: Path, loaded, seed: int, steps: int, window: int, classes: list[str]) -> dict:
    """Their ``train_clap.py`` on the adapted config; returns per-step losses and the kept checkpoint."""
    import yaml

    work = Path(tempfile.mkdtemp(dir=data.parent))
    install_stand_ins(loaded, work)
    (code / "data" / "classes").mkdir(parents=True, exist_ok=True)
    (code / "data" / "classes" / "Toy.yaml").write_text(yaml.safe_dump(classes))
    config = {**PACS_IMAUG_CONFIG, **STILL_CHANGING, "datasets": ["Toy"], "manual_seed": seed,
              "total_steps": steps, "check_frequency": window, "prompts_path": str(data / "prompts_template"),
              "images_path": str(data / "synthesis_images")}
    (work / "config.yml").write_text(yaml.safe_dump(config))
    cwd, argv, path = os.getcwd(), sys.argv, list(sys.path)
    sys.path.insert(0, str(code))
    for name in [m for m in sys.modules if m.split(".")[0] in ("main", "utils")]:
        del sys.modules[name]  # a fresh import per run
    import torch.utils.data as tud

    loader = tud.DataLoader
    os.chdir(code)
    sys.argv = ["train_clap.py", str(work / "config.yml")]
    losses: list[float] = []
    try:
        import main.trainer as trainer_module

        trainer_module.tud.DataLoader = lambda *a, **k: loader(*a, **{**k, "num_workers": 0})
        original = trainer_module.InfoNCELoss

        class Recorded(original):
            def forward(self, x, y):
                loss = super().forward(x, y)
                losses.append(float(loss.detach()))
                return loss

        trainer_module.InfoNCELoss = Recorded
        start = time.perf_counter()
        cpu = time.process_time()
        trainer = runpy.run_path("train_clap.py", run_name="__main__")["trainer"]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        os.chdir(cwd)
        sys.argv, sys.path[:] = argv, path
    return {"losses": losses, "checkpoint": trainer.last_ckpt_path, "wall_s": seconds, "cpu_s": cpu}


# ---- data, ours, the common objective, zero-shot ---------------------------------------------------


def write_authors_layout(root: Path, classes: list[str], seed: int) -> Path:
    """Toy template images as ``gen_images.py`` lays them out, plus the prompt files their dataset reads."""
    from PIL import Image

    from clap_edge.toyworld.synth import template_images

    prompts, images = template_images(classes, seed)
    (root / "prompts_template").mkdir(parents=True)
    for name in classes:
        texts = [p.text() for p in prompts if p.class_name == name]
        (root / "prompts_template" / f"{name}.txt").write_text("\n".join(texts) + "\n")
    for prompt, image in zip(prompts, images):
        folder = root / "synthesis_images" / prompt.class_name / prompt.text()
        folder.mkdir(parents=True)
        Image.fromarray(image).save(folder / f"{prompt.text()}_1.png")
    return root


def window_means(losses: list[float], window: int = 480) -> list[float]:
    return [float(np.mean(losses[i:i + window])) for i in range(0, len(losses) - window + 1, window)]


def common_objective(loaded, data, heads: dict, seed: int, batches: int) -> dict[str, float]:
    """Mean NT-Xent(tau 0.5) of each head on the same seeded (plain, augmented) pairs, batches of 8."""
    from clap_edge.imaug import ImAugConfig, augment_transform, augmented_features, imaug_loss, plain_features
    from clap_edge.core.progress import silent

    cfg = loaded.preprocess_cfg
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data), size=batches * 8, replace=False).tolist()
    transform = augment_transform(ImAugConfig(), tuple(cfg.size), tuple(cfg.mean), tuple(cfg.std))
    plain = plain_features(loaded, data, 256, silent)[idx]
    views = augmented_features(loaded, data, idx, transform, 256, seed, silent)
    out = {}
    with torch.no_grad():
        for name, head in heads.items():
            out[name] = float(np.mean([float(imaug_loss(head, plain[b * 8:(b + 1) * 8], views[b * 8:(b + 1) * 8],
                                                        0.5)) for b in range(batches)]))
    return out


def zero_shot(loaded, dataset: Path, heads: dict, n_boot: int) -> dict:
    """Per head: the authors' alpha (val) and CLAP - CLIP on test (C and PC prompts), pooled over domains."""
    from clap_edge.core.metrics import paired_difference_ci
    from clap_edge.toyworld.world import CLASSES, STYLE_SWAP_DOMAINS
    from clap_edge.zeroshot import EvalConfig, evaluate_folder

    config = EvalConfig(prompt_formats=("C", "PC"), alpha_objective="authors", n_boot=n_boot)
    result, _ = evaluate_folder(dataset, loaded, heads, config, class_names=list(CLASSES))
    out = {}
    for key, alpha in result.alphas.items():
        scores = result.scores[key]
        row = {"alpha": alpha}
        for label, domains in (("all_domains", list(scores)), ("style_swap_domains", list(STYLE_SWAP_DOMAINS)),
                               ("id", ["id"])):
            clap = np.concatenate([scores[d][alpha] for d in domains])
            clip = np.concatenate([scores[d][0.0] for d in domains])
            points, (lo, hi) = paired_difference_ci(clap, clip, n_boot, 0)
            row[label] = {"clip_top1": round(clip.mean() * 100, 2), "head_top1": round(clap.mean() * 100, 2),
                          "points": round(points, 2), "ci95": [round(lo, 2), round(hi, 2)], "images": len(clap)}
        out[key] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-repo", type=Path, default=Path(DEFAULT_REPO),
                        help="a checkout or git directory of YichaoCai1/CLAP (holding commit AUTHORS_COMMIT)")
    parser.add_argument("--seeds", default="2024,2025,2026", help="training seeds (their manual_seed: not 0)")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--window", type=int, default=480, help="early-stop window (their check_frequency)")
    parser.add_argument("--per-class", type=int, default=40, help="toy eval dataset: images per class/domain/split")
    parser.add_argument("--objective-batches", type=int, default=100)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    from clap_edge.core.machine import cpu_info
    from clap_edge.head import CLAPHead
    from clap_edge.imaug import ImAugConfig, ImageSet, train_imaug_head
    from clap_edge.models import load_model
    from clap_edge.toyworld import write_dataset
    from clap_edge.toyworld.world import CLASSES, toy_prompt_vocab
    from clap_edge.train import TrainConfig, train_head

    torch.set_num_threads(1)
    load_before, started = os.getloadavg(), time.time()
    classes = list(CLASSES)
    loaded = load_model("clap-edge-toy", "toyworld")
    runs: dict[str, list] = {"authors": [], "ours": []}
    heads: dict[str, CLAPHead] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_root = write_authors_layout(tmp / "data", classes, seed=0)
        (tmp / "authors").mkdir()
        code = extract_authors(args.authors_repo, tmp / "authors")
        data = ImageSet.from_folder(data_root / "synthesis_images", classes)
        for seed in seeds:
            theirs = run_authors(code, data_root, loaded, seed, args.steps, args.window, classes)
            heads[f"authors_psi_{seed}"] = CLAPHead.from_official_checkpoint(theirs["checkpoint"], network="psi")
            kept = int(Path(theirs["checkpoint"]).stem.split("_")[1])
            runs["authors"].append({"seed": seed, "steps_run": len(theirs["losses"]), "kept_step": kept,
                                    "window_means": window_means(theirs["losses"], args.window),
                                    "wall_s": round(theirs["wall_s"], 1), "cpu_s": round(theirs["cpu_s"], 1)})
            print(f"authors seed {seed}: {runs['authors'][-1]}", flush=True)
            start, cpu = time.perf_counter(), time.process_time()
            head, result = train_imaug_head(loaded, data, ImAugConfig(steps=args.steps, seed=seed,
                                                                      window=args.window))
            heads[f"ours_psi_{seed}"] = head
            runs["ours"].append({"seed": seed, "steps_run": result.steps_run,
                                 "kept_step": head.config.training["kept_step"], "window_means": result.window_means,
                                 "wall_s": round(time.perf_counter() - start, 1),
                                 "cpu_s": round(time.process_time() - cpu, 1)})
            print(f"ours seed {seed}: {runs['ours'][-1]}", flush=True)
            beta, _ = train_head(loaded, classes, TrainConfig(vocab=toy_prompt_vocab(), seed=seed, progress=False,
                                                              steps=args.steps, window=args.window))
            heads[f"clap_beta_{seed}"] = beta
        from clap_edge.head import HeadConfig

        identity = CLAPHead(HeadConfig(in_dim=loaded.embed_dim))
        objective = common_objective(loaded, data, {"identity (CLIP)": identity, **heads}, 7,
                                     args.objective_batches)
        write_dataset(tmp / "eval", per_class=args.per_class, seed=0)
        shots = zero_shot(loaded, tmp / "eval", heads, 1000)
    report = summarise(args, seeds, runs, objective, shots)
    model, flags = cpu_info()
    report["machine"] = {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(),
                         "cpu_flags": [f for f in flags if "avx" in f or "amx" in f],
                         "load_average_before": load_before, "load_average_after": os.getloadavg(),
                         "wall_s": round(time.time() - started, 1), "torch_threads": 1}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["verdict"], indent=2))
    print(f"wrote {args.out}")


def summarise(args, seeds, runs, objective, shots) -> dict:
    def stats(values):
        return {"mean": round(float(np.mean(values)), 4), "sd": round(float(np.std(values, ddof=1)), 4)
                if len(values) > 1 else None, "values": [round(v, 4) for v in values]}

    def kept(row):  # the mean loss of the window whose end is the kept checkpoint
        means = row["window_means"]
        return means[min(len(means), max(1, row["kept_step"] // args.window)) - 1] if means else float("nan")

    kept_window = {who: [kept(r) for r in rows] for who, rows in runs.items()}
    common = {who: [objective[f"{who}_psi_{s}"] for s in seeds] for who in ("authors", "ours")}
    verdict = {}
    for label, values in (("training_loss_kept_window", kept_window), ("common_objective", common)):
        a, o = stats(values["authors"]), stats(values["ours"])
        sd = max(a["sd"] or 0.0, o["sd"] or 0.0)
        verdict[label] = {"authors": a, "ours": o, "difference": round(o["mean"] - a["mean"], 4),
                          "within_2_sd": abs(o["mean"] - a["mean"]) <= 2 * sd if sd else None}
    verdict["common_objective"]["identity_clip"] = round(objective["identity (CLIP)"], 4)
    verdict["common_objective"]["clap_beta"] = stats([objective[f"clap_beta_{s}"] for s in seeds])
    return {"command": f"python bench/imaug_vs_authors.py --seeds {args.seeds} --steps {args.steps} "
                       f"--window {args.window} --per-class {args.per_class} "
                       f"--objective-batches {args.objective_batches}",
            "authors_commit": AUTHORS_COMMIT, "adapted": STILL_CHANGING, "verdict": verdict, "runs": runs,
            "common_objective_per_head": {k: round(v, 4) for k, v in objective.items()}, "zero_shot": shots}


if __name__ == "__main__":
    main()
