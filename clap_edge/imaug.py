"""Im.Aug: the authors' image-augmentation head (``network_psi``), trained on images of the template prompts.

As in the authors' code (YichaoCai1/CLAP ``main/trainer.py`` with ``which_network: [psi]``,
``utils/data_utils.py``): each item is one image and two views of it, the plain eval view
(resize, centre crop, normalise) and an augmented one (colour jitter, random block mask,
perspective, random resized crop with aspect 1, flip, centre crop); the loss is
NTXent_{tau}(f(x), f(x')) with tau 0.5 on the frozen image encoder's features through the
head at s = 1. No text enters the loss. Defaults are the released PACS Im.Aug config
(``runs/Results_ImgAug_ViTB/PACS_ImgAug/config.yml``): crop scale [0.64, 1], no flip, no
perspective, ``mask: [0.0, 0.25, 8, 16]`` (probability 0, so off; see :class:`RandomMask`),
ColorJitter(brightness 0.5, hue 0.3) always on (hard-coded in their transform), batch 8,
shuffled loader, Adam 1e-4, 8000 steps, early stop on 480-step windows (patience 5, delta 0.01)
keeping the best window's weights.

Why it is fast: the plain view is deterministic, so every image's plain features are encoded
once; the augmented views the seeded schedule draws are made and encoded a window ahead in
large batches. The loop runs only the head.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from clap_edge.core.errors import ClapEdgeError
from clap_edge.core.progress import Progress, or_silent
from clap_edge.head import CLAPHead, HeadConfig
from clap_edge.models import LoadedModel
from clap_edge.train import BATCHINGS, KEEPS, EarlyStopper, TrainResult, _chunks, _head_threads, nt_xent


@dataclass
class ImAugConfig:
    """The authors' Im.Aug settings (PACS config) as defaults; every one recorded in the head's metadata."""

    steps: int = 8000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    tau: float = 0.5  # the authors' tau_img
    latent_dim: int = 256
    activation: str = "silu"
    crop_scale: tuple[float, float] = (0.64, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)  # hard-coded in their RandomResizedCrop
    brightness: float = 0.5  # ColorJitter, hard-coded in their transform (always applied)
    hue: float = 0.3
    mask: tuple[float, float, int, int] = (0.0, 0.25, 8, 16)  # RandomMask(p, ratio, k1, k2)
    perspective: float = 0.0  # RandomPerspective probability (distortion 0.5, hard-coded)
    hflip: float = 0.0
    batching: str = "shuffle"  # the authors' shuffled loader; balanced: one image of each class in turn
    keep: str = "best"  # the authors' early stopping keeps the best window's checkpoint
    early_stop: bool = True
    window: int = 480
    patience: int = 5
    min_delta: float = 0.01
    seed: int = 0
    device: str = "cpu"
    encode_batch_size: int = 256
    progress: Progress | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "window", "patience", "encode_batch_size", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (NT-Xent needs negatives)")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must be 0 < min <= max <= 1, got {self.crop_scale}")
        p, ratio, k1, k2 = self.mask
        if not (0 <= p <= 1 and 0 <= ratio <= 1 and 1 <= k1 < k2):
            raise ValueError(f"mask must be (p in [0,1], ratio in [0,1], 1 <= k1 < k2), got {self.mask}")
        for name in ("perspective", "hflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name, allowed in (("batching", BATCHINGS), ("keep", KEEPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def settings(self) -> dict[str, Any]:
        return {"method": "imaug", **{k: v for k, v in asdict(self).items() if k != "progress"}}


class RandomMask(torch.nn.Module):
    """The authors' ``RandomMask`` (``utils/data_utils.py``), on a PIL image.

    With probability ``p``: cut the image into a k x k grid of blocks, k = int(uniform(k1, k2)),
    and set a random number of them, uniform in 0 .. int(ratio * k^2), to 0 (black). So their
    ``mask: [0.0, 0.25, 8, 16]`` is: never (p = 0); at most a quarter of the blocks; 8..15 blocks a side.
    Randomness from torch's generator (theirs mixes numpy's and Python's).
    """

    def __init__(self, p: float = 0.0, ratio: float = 0.25, k1: int = 8, k2: int = 16):
        super().__init__()
        self.p, self.ratio, self.k1, self.k2 = p, ratio, int(k1), int(k2)

    def forward(self, image: Image.Image) -> Image.Image:
        if float(torch.rand(1)) >= self.p:
            return image
        k = int(torch.empty(1).uniform_(self.k1, self.k2))
        count = int(torch.randint(0, int(self.ratio * k * k) + 1, (1,)))
        im = np.array(image.convert("RGB"))
        kh, kw = im.shape[0] // k, im.shape[1] // k
        for block in torch.randperm(k * k)[:count].tolist():
            i, j = divmod(block, k)
            im[i * kh:(i + 1) * kh, j * kw:(j + 1) * kw] = 0
        return Image.fromarray(im)


def augment_transform(config: ImAugConfig, size: tuple[int, int], mean: tuple, std: tuple) -> Callable:
    """The authors' augmented view, in their order, with torchvision's transforms (PIL in, tensor out)."""
    import torchvision.transforms as T
    from torchvision.transforms import v2

    bicubic = T.InterpolationMode.BICUBIC
    return T.Compose([
        v2.ColorJitter(brightness=config.brightness, hue=config.hue),
        RandomMask(*config.mask),
        v2.RandomPerspective(distortion_scale=0.5, p=config.perspective),
        T.RandomResizedCrop(size, scale=tuple(config.crop_scale), ratio=tuple(config.crop_ratio),
                            interpolation=bicubic, antialias=True),
        T.RandomHorizontalFlip(p=config.hflip),
        T.CenterCrop(size),
        lambda image: image.convert("RGB"),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


@dataclass
class ImageSet:
    """Training images: class names, a label per image and a way to open image ``i`` as PIL."""

    class_names: list[str]
    labels: np.ndarray
    opener: Callable[[int], Image.Image] = field(repr=False)
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_folder(cls, root: str | Path, class_names: list[str] | None = None) -> "ImageSet":
        """``root/<class>/**`` image files (the authors' ``<class>/<prompt>/*.png`` layout included)."""
        from clap_edge.core.images import is_image_file, load_image

        root = Path(root)
        if not root.is_dir():
            raise ClapEdgeError(f"--images {root}: not a folder (expected one folder of images per class)")
        names = class_names or sorted(d.name for d in root.iterdir() if d.is_dir())
        paths: list[Path] = []
        labels: list[int] = []
        for k, name in enumerate(names):
            folder = root / name
            files = sorted(f for f in folder.rglob("*") if f.is_file() and is_image_file(f)) if folder.is_dir() else []
            if not files:
                raise ClapEdgeError(f"--images {root}: no image files for class {name!r} (expected {folder}/...)")
            paths += files
            labels += [k] * len(files)
        if len(names) < 2:
            raise ClapEdgeError(f"--images {root}: Im.Aug needs at least two classes, found {len(names)}")
        return cls(list(names), np.asarray(labels), lambda i: load_image(paths[i]), str(root))

    @classmethod
    def from_toy(cls, class_names: list[str] | None = None, seed: int = 0, per_class: int | None = None
                 ) -> "ImageSet":
        """One toy image per toy template prompt (:mod:`clap_edge.toyworld.synth`; ``per_class``: a sample)."""
        from clap_edge.toyworld.synth import template_images
        from clap_edge.toyworld.world import CLASSES

        names = list(class_names or CLASSES)
        prompts, images = template_images(names, seed, per_class)
        labels = np.array([names.index(p.class_name) for p in prompts])
        return cls(names, labels, lambda i: Image.fromarray(images[i]), f"toy template images (seed {seed})")


class IndexSchedule:
    """Seeded image indices per step: ``shuffle`` (every image once per epoch, random order) or ``balanced``."""

    def __init__(self, labels: np.ndarray, config: ImAugConfig):
        self.labels, self.config = labels, config
        self.rng = random.Random(config.seed)
        self.per_class = {int(c): list(np.flatnonzero(labels == c)) for c in np.unique(labels)}
        self._epoch: list[int] = []
        self._queues: dict[int, list[int]] = {c: [] for c in self.per_class}
        self._classes: list[int] = []

    def batch(self) -> list[int]:
        return [self._next() for _ in range(self.config.batch_size)]

    def _next(self) -> int:
        if self.config.batching == "shuffle":
            if not self._epoch:
                self._epoch = self.rng.sample(range(len(self.labels)), len(self.labels))
            return self._epoch.pop()
        if not self._classes:
            self._classes = self.rng.sample(list(self.per_class), len(self.per_class))
        c = self._classes.pop()
        if not self._queues[c]:
            self._queues[c] = self.rng.sample(self.per_class[c], len(self.per_class[c]))
        return int(self._queues[c].pop())


@torch.no_grad()
def _encode(loaded: LoadedModel, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return loaded.model.encode_image(torch.stack(images).to(device)).float().cpu()


def plain_features(loaded: LoadedModel, data: ImageSet, batch_size: int, progress: Progress) -> torch.Tensor:
    """Every image's eval-view features (the runtime's preprocessing = open_clip's eval transform)."""
    from clap_edge.core.preprocess import PreprocessCfg, Preprocessor

    preprocess = Preprocessor(PreprocessCfg.from_open_clip(loaded.preprocess_cfg))
    device = next(loaded.model.parameters()).device
    out = []
    for start in range(0, len(data), batch_size):
        idx = range(start, min(len(data), start + batch_size))
        out.append(_encode(loaded, [torch.from_numpy(preprocess(data.opener(i))) for i in idx], device))
        progress("encoding images", len(idx))
    return torch.cat(out)


def augmented_features(loaded: LoadedModel, data: ImageSet, indices: list[int], transform: Callable,
                       batch_size: int, seed: int, progress: Progress) -> torch.Tensor:
    """Features of one augmented view per index, augmentations from a torch stream seeded by ``seed``."""
    device = next(loaded.model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator: isolate it
        torch.manual_seed(seed)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            out.append(_encode(loaded, [transform(data.opener(i)) for i in chunk], device))
            progress("encoding images", len(chunk))
    return torch.cat(out)


def train_imaug_head(loaded: LoadedModel, data: ImageSet, config: ImAugConfig | None = None
                     ) -> tuple[CLAPHead, TrainResult]:
    """Train an Im.Aug (psi) head on ``data``'s images through ``loaded``'s frozen image tower."""
    config = config or ImAugConfig()
    device = torch.device(config.device)
    loaded.model.to(device).eval()
    cfg = loaded.preprocess_cfg
    size = tuple(cfg.size) if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
    transform = augment_transform(config, size, tuple(cfg.mean), tuple(cfg.std))
    progress = or_silent(config.progress)
    progress("encoding images", 0, None)
    progress("training head", 0, config.steps)
    start = time.perf_counter()
    plain = plain_features(loaded, data, config.encode_batch_size, progress)
    encode_seconds, encoded = time.perf_counter() - start, len(data)

    torch.manual_seed(config.seed)
    head = CLAPHead(HeadConfig(in_dim=plain.shape[1], latent_dim=config.latent_dim, activation=config.activation,
                               model_name=loaded.model_name, pretrained=loaded.pretrained,
                               class_names=list(data.class_names))).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule, stopper = IndexSchedule(data.labels, config), EarlyStopper(config)
    losses: list[float] = []
    loop_seconds, best_state, kept_step = 0.0, None, None
    for n, chunk in enumerate(_chunks(config.steps, config.window)):
        batches = [schedule.batch() for _ in range(chunk)]
        t0 = time.perf_counter()
        flat = [i for b in batches for i in b]
        views = augmented_features(loaded, data, flat, transform, config.encode_batch_size,
                                   config.seed * 1_000_003 + n, progress)
        encode_seconds, encoded = encode_seconds + time.perf_counter() - t0, encoded + len(flat)
        t0 = time.perf_counter()
        with _head_threads(device):
            _run_steps(head, optimizer, plain, views, batches, config, device, losses, progress)
        loop_seconds += time.perf_counter() - t0
        stop = stopper.update(losses[-chunk:])
        if config.keep == "best" and stopper.improved:  # the authors save a checkpoint here
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            kept_step = len(losses)
        if stop:
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    result = TrainResult(losses, len(losses), len(losses) < config.steps, stopper.means, encoded, encode_seconds,
                         loop_seconds, config.window)
    head.config.training = {**config.settings(), "images": data.source, "images_count": len(data),
                            "final_loss": result.final_loss, "steps_run": result.steps_run,
                            "stopped_early": result.stopped_early, "kept_step": kept_step or result.steps_run}
    return head.cpu().eval(), result


def _run_steps(head: CLAPHead, optimizer: torch.optim.Optimizer, plain: torch.Tensor, views: torch.Tensor,
               batches: list[list[int]], config: ImAugConfig, device: torch.device, losses: list[float],
               progress: Progress) -> None:
    plain, views = plain.to(device), views.to(device)
    index = torch.tensor(batches, device=device)
    step_losses = []
    for step, rows in enumerate(index):
        view_rows = torch.arange(step * len(rows), (step + 1) * len(rows), device=device)
        loss = imaug_loss(head, plain[rows], views[view_rows], config.tau)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_losses.append(loss.detach())
        progress("training head")
    losses.extend(torch.stack(step_losses).cpu().tolist())


def imaug_loss(head: CLAPHead, x: torch.Tensor, x_aug: torch.Tensor, tau: float) -> torch.Tensor:
    """NTXent_tau(f(x), f(x')) with s = 1: the authors' psi objective."""
    return nt_xent(head(x, alpha=1.0), head(x_aug, alpha=1.0), tau)


__all__ = ["ImAugConfig", "ImageSet", "IndexSchedule", "RandomMask", "augment_transform", "imaug_loss",
           "plain_features", "augmented_features", "train_imaug_head"]
