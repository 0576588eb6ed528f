"""Training the CLAP head on a frozen open_clip text tower (CLAP.md: loss, sampling, optimiser, early stop).

Why it is fast: the frozen encoder never runs inside the training loop. Prompts and class
names are encoded once; the augmented noisy views that the seeded schedule draws are
encoded ahead, one early-stop window at a time, in large length-sorted batches cut to their
longest real sequence (see :mod:`clap_edge.text_encoder`), and every encoded text is kept in
an :class:`EmbeddingCache` (memory, optionally disk). Noise comes from a pool of ``noise_pool``
pre-drawn noise contexts per view, so a view drawn again reuses an encoding. The loop itself
then runs only the head.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from clap_edge.core.errors import PromptError
from clap_edge.head import CLAPHead, HeadConfig
from clap_edge.core.io import atomic_path
from clap_edge.core.progress import Progress, or_silent
from clap_edge.models import LoadedModel, tokenize_checked
from clap_edge.prompts import AugmentConfig, Prompt, PromptVocab, augment, dedupe_class_names, template_records
from clap_edge.text_encoder import NoiseConfig, NoiseTextEncoder, draw_noise

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # 2: "middle" noise splits around the words (the authors' layout); shared-draw keys
BATCHINGS = ("balanced", "shuffle")
NOISE_SHARINGS = ("text", "batch", "batch-pool")
# Cache key prefix of a noisy view per sharing mode: "step<n>:" keys are fresh per step and never kept.
NOISE_PREFIX = {"text": "noise", "batch": "step", "batch-pool": "shared"}
KEEPS = ("final", "best")


@dataclass
class TrainConfig:
    """CLAP.md's training settings (paper defaults) plus the knobs of the pre-encoding cache."""

    steps: int = 8000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    tau_text: float = 0.5  # NT-Xent temperature between a prompt and its augmented view
    tau_content: float = 1.0  # NT-Xent temperature between the view and its class name
    lambda_content: float = 1.0
    latent_dim: int = 256
    activation: str = "silu"
    noise_ctx: int = 4
    noise_std: float = 0.02
    # K pre-encoded noise draws per distinct view text (prompts that differ only in dropped words share it).
    # 7 PACS classes x 8000 steps draw ~9.3k distinct view texts: K=1 encodes ~9.3k noisy views, K=4 ~23k
    # (bench/results/train_speed.json: 62x faster than encoding every step with K=4, 77x with K=1).
    noise_pool: int = 4
    # The authors' details we may differ on (README, "CLAP training options"); each is in the head's metadata.
    # balanced: one prompt of each class in turn (no class twice in a row; a batch of 8 over 8 classes holds
    # each once); shuffle: the authors' shuffled loader, a random permutation of every (class, prompt) per epoch.
    batching: str = "balanced"
    # text: each augmented view text has its own noise draws and position (K = noise_pool per text, seeded by
    # the text); batch: the authors' behaviour, a fresh draw and position every step, shared by every view of
    # the step (a pure function of seed and step); batch-pool: the older approximation of it, one shared
    # draw per step taken from a pool of noise_pool draws.
    noise_sharing: str = "text"
    keep: str = "final"  # final weights, or those at the end of the best loss window (the authors' checkpoint)
    early_stop: bool = True
    window: int = 480  # early stop compares mean losses of consecutive windows of this many steps
    patience: int = 5
    min_delta: float = 0.01
    seed: int = 0
    device: str = "cpu"
    encode_batch_size: int = 256
    cache_dir: str | None = None
    vocab: PromptVocab = field(default_factory=PromptVocab)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: Progress | None = None  # a core.progress callback; apps pass a rich bar (False/None: silent)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "noise_pool", "window", "patience", "encode_batch_size", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (NT-Xent needs negatives)")
        for name, allowed in (("batching", BATCHINGS), ("noise_sharing", NOISE_SHARINGS), ("keep", KEEPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    @property
    def noise(self) -> NoiseConfig:
        return NoiseConfig(n_ctx=self.noise_ctx, std=self.noise_std)

    def settings(self) -> dict[str, Any]:
        """JSON-safe settings, stored in the head's metadata."""
        out = {k: v for k, v in asdict(self).items() if k not in ("vocab", "augment", "progress", "cache_dir")}
        out["augment"] = asdict(self.augment)
        out["vocab_fingerprint"] = hashlib.sha256(self.vocab.fingerprint().encode()).hexdigest()[:16]
        out["noise_middle"] = "split_around_words"  # n_ctx // 2 after SOT, the rest before EOT (authors)
        return out


@dataclass
class TrainResult:
    losses: list[float]
    steps_run: int
    stopped_early: bool
    window_means: list[float]
    encoded_texts: int  # sequences the frozen encoder ran on in this call (cache misses)
    encode_seconds: float
    loop_seconds: float
    window: int = 480

    @property
    def final_loss(self) -> float:
        """Mean loss of the last window (or of every step when fewer were run)."""
        tail = self.losses[-min(len(self.losses), self.window):]
        return float(sum(tail) / max(1, len(tail)))


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent: row i of ``a`` and row i of ``b`` are positives, all other 2N-2 rows negatives."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n = a.shape[0]
    sim = (z @ z.T) / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def clap_loss(head: CLAPHead, t: torch.Tensor, t_aug: torch.Tensor, c: torch.Tensor, config: TrainConfig
              ) -> torch.Tensor:
    """NTXent_{tau_text}(f(t), f(t')) + lambda * NTXent_{tau_content}(f(t'), f(c)), with s = 1."""
    ft, fv, fc = head(t, alpha=1.0), head(t_aug, alpha=1.0), head(c, alpha=1.0)
    return nt_xent(ft, fv, config.tau_text) + config.lambda_content * nt_xent(fv, fc, config.tau_content)


class EmbeddingCache:
    """Text -> frozen-encoder embedding, filled in large batches, optionally persisted to ``path``.

    Entries are keyed by text (``plain:<text>`` or ``noise<k>:<text>``); the file name
    keys model, weights, vocabulary, augmentation and noise settings, so a file is only
    ever reused by a run for which it is valid.
    """

    def __init__(self, encoder: NoiseTextEncoder, tokenizer: Any, noise: NoiseConfig, seed: int,
                 batch_size: int = 256, path: Path | None = None):
        self.encoder, self.tokenizer, self.noise, self.seed = encoder, tokenizer, noise, seed
        self.batch_size = batch_size
        self.path = path
        self.index: dict[str, int] = {}
        self.table = torch.empty(0, 0)
        self.encoded = 0  # cache misses this session
        self.encode_seconds = 0.0
        if path is not None and path.is_file():
            self._load(path)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, keys: list[str]) -> torch.Tensor:
        return self.table[torch.tensor([self.index[k] for k in keys], dtype=torch.long)]

    def ensure(self, keys: list[str], progress: Any = None) -> None:
        """Encode every key not yet cached, plain and noisy ones each in large batches."""
        missing = list(dict.fromkeys(k for k in keys if k not in self.index))
        if not missing:
            return
        start = time.perf_counter()
        plain = [k for k in missing if k.startswith("plain:")]
        noisy = [k for k in missing if not k.startswith("plain:")]
        for group, with_noise in ((plain, False), (noisy, True)):
            if group:
                self._add(group, self._encode(group, with_noise, progress))
        self.encoded += len(missing)
        self.encode_seconds += time.perf_counter() - start

    def _encode(self, keys: list[str], with_noise: bool, progress: Any) -> torch.Tensor:
        texts = [k.split(":", 1)[1] for k in keys]
        reserve = self.noise.n_ctx if with_noise else 0
        tokens = self.tokenizer(texts)
        # EOT strictly before the last free slot proves nothing was truncated; else redo with the named error.
        if int(self.encoder.eot_index(tokens).max()) + 1 + reserve >= tokens.shape[1]:
            tokens = tokenize_checked(self.tokenizer, texts, reserve=reserve)
        noise = positions = None
        if with_noise and self.noise.n_ctx:
            # "shared<k>:<text>" / "step<n>:<text>" keys draw from "shared<k>" / "step<n>" alone: every view of
            # a batch gets the same noise and position
            draw_keys = [k.split(":", 1)[0] if k.startswith(("shared", "step")) else k for k in keys]
            noise, where = draw_noise(keys, self.noise, self.encoder.width, self.seed, draw_keys)
            positions = self.encoder.insert_positions(tokens, where)
        return self.encoder.encode_batched(tokens, self.batch_size, noise, positions, progress)

    def forget(self, prefix: str) -> None:
        """Drop every entry whose key starts with ``prefix`` (per-step views: never asked for again)."""
        keep = [k for k in self.index if not k.startswith(prefix)]
        if len(keep) == len(self.index):
            return
        rows = torch.tensor([self.index[k] for k in keep], dtype=torch.long)
        self.table = self.table[rows] if keep else torch.empty(0, 0)
        self.index = {k: i for i, k in enumerate(keep)}

    def _add(self, keys: list[str], rows: torch.Tensor) -> None:
        base = self.table.shape[0]
        self.table = rows if base == 0 else torch.cat([self.table, rows])
        self.index.update({k: base + i for i, k in enumerate(keys)})

    def save(self) -> None:
        if self.path is None or self.encoded == 0:
            return
        with atomic_path(self.path) as tmp:
            torch.save({"format": CACHE_FORMAT, "keys": list(self.index), "table": self.table}, tmp)

    def _load(self, path: Path) -> None:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            keys, table = data["keys"], data["table"]
            if data["format"] != CACHE_FORMAT or len(keys) != table.shape[0]:
                raise ValueError(f"format {data['format']}, {len(keys)} keys for {table.shape[0]} rows")
        except Exception as e:  # a stale or corrupt cache is not fatal: re-encode
            log.warning("ignoring unreadable embedding cache %s (%s)", path, e)
            return
        self.table = table.float()
        self.index = {k: i for i, k in enumerate(keys)}


def cache_file(cache_dir: str | os.PathLike, loaded: LoadedModel, config: TrainConfig) -> Path:
    """``cache_dir/<model>-<hash>.pt``, the hash covering everything an embedding depends on.

    The text tower's weights are hashed too: a random-init model differs on every load and a
    local checkpoint may be overwritten, so name + tag alone would reuse stale embeddings.
    """
    parts = [loaded.model_name, loaded.pretrained or "", text_tower_fingerprint(loaded.model),
             config.vocab.fingerprint(), repr(config.augment), repr(config.noise), str(config.seed), str(CACHE_FORMAT)]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{loaded.model_name.replace('/', '_')}-{digest}.pt"


def text_tower_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the text tower's weights (about 0.3 s for ViT-B-32's 63M text parameters)."""
    digest = hashlib.sha256()
    parts = [getattr(model, name) for name in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                                               "text_projection")]
    for part in parts:
        if part is None:
            continue
        tensors = [part] if isinstance(part, torch.Tensor) else list(part.state_dict().values())
        for tensor in tensors:
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Schedule:
    """The seeded stream of (prompt, augmented view, noise slot).

    ``balanced``: consecutive items have different classes, each class's prompts in a fresh
    shuffle. ``shuffle`` (the authors' shuffled loader): every (class, prompt) pair once per
    epoch in a random order, cut into batches; a batch may hold a class several times.
    With ``noise_sharing="batch"`` every item of a batch gets the step's index as its noise slot
    (a fresh draw each step); with ``"batch-pool"`` one slot drawn from the pool for the whole batch.
    """

    def __init__(self, records: dict[str, list[Prompt]], config: TrainConfig):
        self.records, self.config = records, config
        self.rng = random.Random(config.seed)
        self.classes = list(records)
        self._order: dict[str, list[int]] = {c: [] for c in self.classes}
        self._class_stream: list[str] = []
        self._epoch: list[tuple[str, int]] = []
        self._last: str | None = None
        self.step = 0

    def batch(self) -> list[tuple[Prompt, Prompt, int]]:
        items = [self._item() for _ in range(self.config.batch_size)]
        sharing = self.config.noise_sharing
        if sharing != "text" and self.config.noise_ctx:
            slot = self.step if sharing == "batch" else self.rng.randrange(self.config.noise_pool)
            items = [(prompt, view, slot) for prompt, view, _ in items]
        self.step += 1
        return items

    def _item(self) -> tuple[Prompt, Prompt, int]:
        prompt = self._next_shuffled() if self.config.batching == "shuffle" else self._next_balanced()
        view = augment(prompt, self.rng, self.config.augment, self.config.vocab)
        slot = self.rng.randrange(self.config.noise_pool) if self.config.noise_ctx else 0  # no noise: one view
        return prompt, view, slot

    def _next_balanced(self) -> Prompt:
        cls = self._next_class()
        if not self._order[cls]:  # a fresh shuffle of this class's prompts each time they run out
            self._order[cls] = self.rng.sample(range(len(self.records[cls])), len(self.records[cls]))
        return self.records[cls][self._order[cls].pop()]

    def _next_shuffled(self) -> Prompt:
        if not self._epoch:  # a new epoch: every (class, prompt) once, in a random order
            pairs = [(c, i) for c in self.classes for i in range(len(self.records[c]))]
            self.rng.shuffle(pairs)
            self._epoch = pairs[::-1]
        cls, i = self._epoch.pop()
        return self.records[cls][i]

    def _next_class(self) -> str:
        if not self._class_stream:
            perm = self.rng.sample(self.classes, len(self.classes))
            if len(perm) > 1 and perm[0] == self._last:  # keep consecutive items from different classes
                perm[0], perm[-1] = perm[-1], perm[0]
            self._class_stream = perm[::-1]
        self._last = self._class_stream.pop()
        return self._last


def prepare_class_names(class_names: list[str], loaded: LoadedModel, config: TrainConfig
                        ) -> dict[str, list[Prompt]]:
    """Deduplicate (with a warning) and check every class's prompts fit the text context."""
    names = dedupe_class_names([str(n).strip() for n in class_names if str(n).strip()], source="class names")
    records = {}
    for name in names:
        records[name] = template_records(name, config.vocab)
        try:  # every prompt, by token count: the longest in characters need not be the longest in tokens
            tokenize_checked(loaded.tokenizer, [name] + [p.text() for p in records[name]], reserve=config.noise_ctx)
        except PromptError as e:
            raise PromptError(f"class name {name!r} does not fit the text context of {loaded.model_name}: {e}") from e
    if len(names) < 2:
        warnings.warn(f"training a CLAP head for one class ({names[0]!r}): the content loss has no other class "
                      f"to contrast with, and zero-shot classification needs at least two", stacklevel=2)
    return records


def train_head(loaded: LoadedModel, class_names: list[str], config: TrainConfig | None = None
               ) -> tuple[CLAPHead, TrainResult]:
    """Train a CLAP head for ``class_names`` on ``loaded``'s frozen text tower; returns the head and the run."""
    config = config or TrainConfig()
    records = prepare_class_names(class_names, loaded, config)
    device = torch.device(config.device)
    loaded.model.to(device)
    encoder = NoiseTextEncoder(loaded.model)
    path = cache_file(config.cache_dir, loaded, config) if config.cache_dir else None
    cache = EmbeddingCache(encoder, loaded.tokenizer, config.noise, config.seed, config.encode_batch_size, path)

    torch.manual_seed(config.seed)
    head = CLAPHead(HeadConfig(in_dim=loaded.embed_dim, latent_dim=config.latent_dim, activation=config.activation,
                               model_name=loaded.model_name, pretrained=loaded.pretrained,
                               class_names=list(records))).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = Schedule(records, config)
    stopper = EarlyStopper(config)
    losses: list[float] = []
    loop_seconds = 0.0
    best_state, kept_step = None, None
    progress = or_silent(config.progress)
    progress("encoding texts", 0, None)
    progress("training head", 0, config.steps)
    encoded = lambda n: progress("encoding texts", n)  # noqa: E731
    fixed = [f"plain:{p.text()}" for ps in records.values() for p in ps] + [f"plain:{c}" for c in records]
    cache.ensure(fixed, encoded)
    for chunk in _chunks(config.steps, config.window):
        batches = [schedule.batch() for _ in range(chunk)]
        keys = [_keys(batch, config) for batch in batches]
        cache.ensure([k for step in keys for part in step for k in part], encoded)
        start = time.perf_counter()
        with _head_threads(device):
            _run_steps(head, optimizer, cache, keys, config, device, losses, lambda: progress("training head"))
        loop_seconds += time.perf_counter() - start
        if config.noise_sharing == "batch":
            cache.forget("step")  # fresh per step: keeps memory and the disk cache flat
        stop = stopper.update(losses[-chunk:])
        if config.keep == "best" and stopper.improved:  # the authors save a checkpoint here
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            kept_step = len(losses)
        if stop:
            break
    cache.save()
    if best_state is not None:
        head.load_state_dict(best_state)
    result = TrainResult(losses, len(losses), len(losses) < config.steps, stopper.means, cache.encoded,
                         cache.encode_seconds, loop_seconds, config.window)
    head.config.training = {**config.settings(), "final_loss": result.final_loss, "steps_run": result.steps_run,
                            "stopped_early": result.stopped_early, "kept_step": kept_step or result.steps_run}
    return head.cpu().eval(), result


def _run_steps(head: CLAPHead, optimizer: torch.optim.Optimizer, cache: EmbeddingCache,
               keys: list[tuple[list[str], list[str], list[str]]], config: TrainConfig, device: torch.device,
               losses: list[float], advance: Any) -> None:
    """Run one chunk of steps on cached embeddings (table and indices moved to the device once per chunk)."""
    table = cache.table.to(device)
    index = torch.tensor([[cache.index[k] for part in step for k in part] for step in keys], device=device)
    step_losses = []
    for rows in index:
        t, v, c = table[rows].chunk(3)
        loss = clap_loss(head, t, v, c, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_losses.append(loss.detach())
        advance()
    losses.extend(torch.stack(step_losses).cpu().tolist())  # one device sync per chunk, not per step


@contextlib.contextmanager
def _head_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the head loop on CPU: an [8, 512] matmul is far too small to split,
    and thread hand-offs made each step ~6x slower on a busy 2-core machine."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class EarlyStopper:
    """Stop when the mean loss of a window has not improved by ``min_delta`` for ``patience`` windows."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.best = float("inf")
        self.bad = 0
        self.means: list[float] = []
        self.improved = False  # whether the last judged window beat the best by more than min_delta

    def update(self, window_losses: list[float]) -> bool:
        self.improved = False
        if len(window_losses) < self.config.window:  # a partial final window is not judged
            return False
        mean = sum(window_losses) / len(window_losses)
        self.means.append(mean)
        self.improved = mean < self.best - self.config.min_delta
        if self.improved:
            self.best, self.bad = mean, 0
        else:
            self.bad += 1
        return self.config.early_stop and self.bad >= self.config.patience


def _keys(batch: list[tuple[Prompt, Prompt, int]], config: TrainConfig) -> tuple[list[str], list[str], list[str]]:
    noise = NOISE_PREFIX[config.noise_sharing]
    return ([f"plain:{p.text()}" for p, _, _ in batch], [f"{noise}{k}:{v.text()}" for _, v, k in batch],
            [f"plain:{p.class_name}" for p, _, _ in batch])


def _chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def result_summary(result: TrainResult) -> dict[str, Any]:
    return {"steps_run": result.steps_run, "final_loss": result.final_loss, "stopped_early": result.stopped_early,
            "window_means": result.window_means, "encoded_texts": result.encoded_texts,
            "encode_seconds": round(result.encode_seconds, 3), "loop_seconds": round(result.loop_seconds, 3)}


__all__ = ["TrainConfig", "TrainResult", "EmbeddingCache", "Schedule", "EarlyStopper", "nt_xent", "clap_loss",
           "train_head", "cache_file", "prepare_class_names", "result_summary"]
