"""Few-shot probes on image embeddings in numpy: the authors' linear probe (Adam) and class prototypes.

The linear probe follows the CLAP authors' ``eval_fewshots.py`` / ``training_classifier_with_img``:
features L2-normalised, ``nn.Linear(d, C)`` with torch's default init (weight and bias uniform in
+-1/sqrt(d)), cross-entropy (mean over the batch), Adam lr 0.005 (betas 0.9/0.999, eps 1e-8, no
weight decay), shuffled mini-batches of 32 (last one smaller), up to 1000 epochs. Early stop as
theirs: an epoch whose mean batch loss is not ``min_delta`` (0.001) below the best so far counts
against a patience of 10 -- a count that is never reset -- and the weights kept are those at the
end of the best epoch. Everything is drawn from one ``numpy.random.default_rng(seed)`` (init, then
one permutation per epoch) and computed in float64: the same seed gives the same weights.

Prototypes: the mean normalised embedding of each class, normalised again (no training, no bias).
torch-free, so ``clap-edge adapt`` runs it on a device and the evaluation imports the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from clap_edge.core.errors import ClapEdgeError

METHODS = ("linear", "prototype")

__all__ = ["METHODS", "Probe", "ProbeConfig", "fit_probe", "l2_normalize", "linear_init", "epoch_batches"]


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's settings; the defaults are the authors' (``eval_fewshots.py``)."""

    method: str = "linear"
    lr: float = 0.005
    epochs: int = 1000
    batch_size: int = 32
    patience: int = 10  # non-improving epochs in total (never reset, as the authors' loop)
    min_delta: float = 0.001
    weight_decay: float = 0.0  # L2 added to the gradient, as torch.optim.Adam's weight_decay
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ClapEdgeError(f"probe method {self.method!r}: not one of {', '.join(METHODS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ClapEdgeError("probe epochs, batch_size and lr must be positive")

    def settings(self) -> dict:
        return {**asdict(self), "betas": list(self.betas), "features": "L2-normalised",
                "init": "torch nn.Linear default (uniform +-1/sqrt(d))", "loss": "cross-entropy, batch mean"}


@dataclass
class Probe:
    """A fitted probe: ``logits = normalise(x) @ weight.T + bias`` (bias None for prototypes)."""

    weight: np.ndarray  # [C, d] float32
    bias: np.ndarray | None  # [C] float32
    method: str
    epochs_run: int = 0
    best_epoch: int = 0
    best_loss: float = float("nan")
    losses: list[float] = field(default_factory=list, repr=False)  # mean batch loss per epoch

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = l2_normalize(np.asarray(features, dtype=np.float64)) @ self.weight.astype(np.float64).T
        return z + self.bias if self.bias is not None else z

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(axis=1)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (as torch.nn.functional.normalize: norms clamped at 1e-12)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def linear_init(d: int, c: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """torch ``nn.Linear(d, c)``'s default init in distribution: weight [c, d] and bias [c] ~ U(+-1/sqrt(d))."""
    bound = 1.0 / np.sqrt(d)
    return rng.uniform(-bound, bound, size=(c, d)), rng.uniform(-bound, bound, size=c)


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's shuffled mini-batches (``DataLoader(shuffle=True, drop_last=False)``)."""
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def fit_probe(features: np.ndarray, labels: np.ndarray, n_classes: int, config: ProbeConfig | None = None) -> Probe:
    """Fit ``config.method`` on ``features`` [N, d] (any norm) and integer ``labels`` [N] in [0, n_classes)."""
    config = config or ProbeConfig()
    x, y = _checked(features, labels, n_classes)
    if config.method == "prototype":
        return _prototypes(x, y, n_classes)
    return _linear(x, y, n_classes, config)


def _checked(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(features), np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or not len(y):
        raise ClapEdgeError(f"probe: need features [N, d] and N labels, got {list(x.shape)} and {list(y.shape)}")
    if not np.isfinite(x).all():
        raise ClapEdgeError("probe: features hold NaN or infinite values")
    if y.min() < 0 or y.max() >= n_classes:
        raise ClapEdgeError(f"probe: labels must lie in [0, {n_classes})")
    missing = sorted(set(range(n_classes)) - set(y.tolist()))
    if missing:
        raise ClapEdgeError(f"probe: classes {missing} have no example")
    return l2_normalize(x), y.astype(np.int64)


def _prototypes(x: np.ndarray, y: np.ndarray, n_classes: int) -> Probe:
    means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
    return Probe(l2_normalize(means).astype(np.float32), None, "prototype")


def _loss_and_grads(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray):
    z = x @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    g = np.exp(logp)
    g[np.arange(len(y)), y] -= 1.0
    g /= len(y)
    return -logp[np.arange(len(y)), y].mean(), g.T @ x, g.sum(axis=0)


class _Adam:
    """torch.optim.Adam's update (weight_decay as L2 on the gradient; no amsgrad), on float64 arrays."""

    def __init__(self, params: list[np.ndarray], config: ProbeConfig):
        self.params, self.c, self.t = params, config, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        (b1, b2), c = self.c.betas, self.c
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if c.weight_decay:
                g = g + c.weight_decay * p
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / np.sqrt(1 - b2 ** self.t) + c.eps
            p -= (c.lr / (1 - b1 ** self.t)) * m / denom


def _linear(x: np.ndarray, y: np.ndarray, n_classes: int, config: ProbeConfig) -> Probe:
    rng = np.random.default_rng(config.seed)
    w, b = linear_init(x.shape[1], n_classes, rng)
    adam = _Adam([w, b], config)
    best = (float("inf"), w.copy(), b.copy(), 0)
    stops, losses = 0, []
    for epoch in range(1, config.epochs + 1):
        batch_losses = []
        for idx in epoch_batches(len(y), config.batch_size, rng):
            loss, gw, gb = _loss_and_grads(w, b, x[idx], y[idx])
            batch_losses.append(loss)
            adam.step([gw, gb])
        losses.append(float(np.mean(batch_losses)))
        if losses[-1] < best[0] - config.min_delta:
            best = (losses[-1], w.copy(), b.copy(), epoch)
        else:
            stops += 1
            if stops >= config.patience:
                break
    return Probe(best[1].astype(np.float32), best[2].astype(np.float32), "linear", epochs_run=len(losses),
                 best_epoch=best[3], best_loss=best[0], losses=losses)
