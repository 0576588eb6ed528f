"""Contrastive pretraining of the shipped toy CLIP (``clap-edge-toy``, tag ``toyworld``).

Every step draws a fresh batch from the ``train`` split of the ``id`` domain (images are
generated on the fly, so the model never sees an image twice) with one sampled caption
per image, and takes an AdamW step on the symmetric CLIP loss. Captions often repeat in
a batch ("a red circle"): identical captions are treated as positives of each other
rather than as negatives (soft targets), which removes a source of label noise.

The shipped weights (8.2 MB, fp16) were made with one CPU thread::

    clap-edge toy pretrain --out clap_edge/weights/clap-edge-toy-toyworld.safetensors --seed 0

(the defaults of :class:`PretrainConfig`: 1800 steps of 128 images, half of them in same-style
twin pairs). That run took 667 s of CPU time (811 s wall on a 2-core machine shared with
other jobs). Zero-shot top-1 of the shipped model, prompt = the bare class name (format C),
800 ``test`` images per domain (seed 0; ``evaluate_domains`` on ``load_model("clap-edge-toy",
"toyworld")``, i.e. after fp16 storage; the command prints the fp32 figures, 50.0 on ``both``):

| prompt | id | color_shift | background_shift | render_shift | both | style_swap | style_swap_render |
| --- | --- | --- | --- | --- | --- | --- | --- |
| C ``"{class}"`` | 86.4 | 79.9 | 79.0 | 72.2 | 49.8 | 70.6 | 52.4 |
| PC ``"a photo of a {class}."`` | 85.2 | 79.6 | 78.4 | 71.9 | 51.1 | 70.9 | 54.1 |

(The two ``style_swap`` domains were added later and measured on the same shipped weights;
the ~15-point drop from ``id`` to ``style_swap``, whose only change is that colour and
background point to another class, is how much this CLIP reads style.)

(The same recipe with 1200 steps, 486 s CPU, gave 74.2 / 61.6 / 65.1 / 61.9 / 31.4.)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clap_edge.core.io import atomic_path
from clap_edge.toyworld.render import render
from clap_edge.toyworld.world import CLASSES, DOMAINS, Factors, captions, sample_factors, split_seed

MODEL_NAME = "clap-edge-toy"
PRETRAINED_TAG = "toyworld"
DEFAULT_PROMPT = "{}"  # format C: the bare class name


@dataclass
class PretrainConfig:
    """Hyper-parameters of the toy CLIP pretraining (the defaults made the shipped weights)."""

    model_name: str = MODEL_NAME
    seed: int = 0
    steps: int = 1800
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 150
    weight_decay: float = 0.05
    domain: str = "id"
    twin_fraction: float = 0.5  # share of the batch in (anchor, same-style other-class twin) pairs
    threads: int = 1  # the reference machine is shared: pretraining uses one core


@dataclass
class PretrainResult:
    model: torch.nn.Module
    config: PretrainConfig
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # process CPU time: the cost on one core, whatever else shares the machine


def pretrain(config: PretrainConfig | None = None,
             progress: Callable[[int, float], None] | None = None) -> PretrainResult:
    """Train a randomly initialised ``config.model_name`` on the toy world; returns the fp32 model."""
    import open_clip

    import clap_edge.models  # noqa: F401  (registers our model configs with open_clip)

    config = config or PretrainConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = open_clip.create_model(config.model_name)
    tokenizer = open_clip.get_tokenizer(config.model_name)
    mean, std = _norm_tensors(open_clip.get_model_preprocess_cfg(model))
    optimizer = _optimizer(model, config)
    rng = np.random.default_rng(split_seed(config.seed, config.domain, "train"))
    result = PretrainResult(model, config)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for step in range(config.steps):
        factors = training_batch(rng, config)
        texts = captions(factors, seed=int(rng.integers(0, 2**31 - 1)))
        images = to_tensor(render(factors), mean, std)
        tokens = tokenizer(texts)
        _set_lr(optimizer, config, step)
        loss = clip_loss(model, images, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # as in CLIP: keep the temperature in a sane range
            model.logit_scale.clamp_(0, math.log(100))
        result.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, result.losses[-1])
    model.eval()
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def training_batch(rng: np.random.Generator, config: PretrainConfig) -> Factors:
    """``batch_size`` images: id samples, a ``twin_fraction`` of them paired with a same-style twin.

    A twin copies its anchor's style (colour, size, background, rendering, position) but
    shows another class, so the batch always holds negatives that differ by content
    only: without them, matching style words alone lowers the loss so much that shape
    is learnt late (the hard negatives the issue's feasibility notes suggest).
    """
    n_twins = int(config.batch_size * config.twin_fraction / 2)
    n_anchors = config.batch_size - n_twins
    anchors = sample_factors(n_anchors, config.domain, rng, labels=rng.integers(0, len(CLASSES), n_anchors))
    if n_twins == 0:
        return anchors
    fields = {k: np.concatenate([v, v[:n_twins]]) for k, v in vars(anchors).items()}
    other = (anchors.label[:n_twins] + rng.integers(1, len(CLASSES), n_twins)) % len(CLASSES)
    fields["label"][n_anchors:] = other
    fields["texture_seed"][n_anchors:] = rng.integers(0, 2**31 - 1, n_twins)
    return Factors(**fields)


def clip_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where identical captions are positives of each other."""
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-targets * logits.log_softmax(1), 1).mean()
                  + torch.sum(-targets * logits.T.log_softmax(1), 1).mean())


def _optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.Optimizer:
    # No weight decay on gains, biases, embeddings and the temperature (open_clip's rule).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding")
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _set_lr(optimizer: torch.optim.Optimizer, config: PretrainConfig, step: int) -> None:
    """Linear warmup, then cosine decay to zero."""
    if step < config.warmup_steps:
        lr = config.lr * (step + 1) / config.warmup_steps
    else:
        t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        lr = 0.5 * config.lr * (1 + math.cos(math.pi * t))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _norm_tensors(preprocess_cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(preprocess_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


def to_tensor(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float32 [N, 3, H, W] (what the preprocess transform gives for PNGs)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - mean) / std


def save_weights(model: torch.nn.Module, path: str | Path, config: PretrainConfig | None = None) -> Path:
    """Write the state dict as fp16 safetensors (atomic); fp32 loaders upcast on load."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {k: str(v) for k, v in asdict(config).items()} if config else {}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


# ---- zero-shot accuracy of a toy CLIP ---------------------------------------------------

@torch.no_grad()
def zero_shot_top1(model: torch.nn.Module, tokenizer, images: np.ndarray, labels: np.ndarray,
                   preprocess_cfg: dict, prompt: str = DEFAULT_PROMPT, batch_size: int = 500) -> float:
    """Top-1 (percent) of ``model`` on uint8 ``images`` with class prompts ``prompt.format(class)``.

    Scored by :func:`clap_edge.zeroshot.zero_shot_logits`, the one zero-shot scoring function.
    """
    from clap_edge.core.metrics import top1_correct
    from clap_edge.zeroshot import zero_shot_logits

    mean, std = _norm_tensors(preprocess_cfg)
    text = model.encode_text(tokenizer([prompt.format(c) for c in CLASSES])).float()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size], mean, std)
        logits = zero_shot_logits(model.encode_image(x).float(), text)
        correct += int(top1_correct(logits, labels[start:start + batch_size]).sum())
    return 100.0 * correct / len(images)


def domain_sample(domain: str, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8) and labels of a domain's split, balanced over classes."""
    rng = np.random.default_rng(split_seed(seed, domain, split))
    factors = sample_factors(n, domain, rng)
    return render(factors), factors.label


def evaluate_domains(model: torch.nn.Module, tokenizer, preprocess_cfg: dict, n: int = 800, split: str = "test",
                     seed: int = 0, prompt: str = DEFAULT_PROMPT,
                     domains: tuple[str, ...] = DOMAINS) -> dict[str, float]:
    """Zero-shot top-1 (percent) per domain on ``n`` fresh images of ``split``."""
    out = {}
    for domain in domains:
        images, labels = domain_sample(domain, split, n, seed)
        out[domain] = zero_shot_top1(model, tokenizer, images, labels, preprocess_cfg, prompt)
    return out
