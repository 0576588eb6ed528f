"""Few-shot adaptation on the device: ``DIR/<class>/*`` photos -> a probe on the bundle's embeddings -> new classes.

The bundle's own model gives the embeddings (its ``embedding`` output: CLAP-projected and L2-normalised,
through any torch-free backend), :mod:`clap_edge.core.probe` fits the authors' linear probe (or class
prototypes) on them, and :func:`clap_edge.export.bundle.rewrite_classes` writes the result as the bundle's
class matrix: the runtime computes ``logit_scale * emb @ W.T + b``, so a probe ``emb @ P.T + c`` is stored
as ``W = P / logit_scale``, ``b = c`` (prototypes are stored as they are, like text embeddings). With
``blend`` w < 1 the logits become ``(1 - w) * zero-shot + w * few-shot``, which is again one W and b.

Classes: the folder's, those the bundle knows first (in the bundle's order), then new ones (sorted);
bundle classes without a folder are dropped (listed in the report). Folder names read ``_`` as a
space, as dataset folders do. Shots are read class by class, file names sorted: the order the
few-shot evaluation (:mod:`clap_edge.fewshot`) fits in, so both give the same probe for the same shots.

The held-out check fits once more without a few shots per class (``holdout`` share, at least one from
every class with two or more) and scores them, next to the bundle's zero-shot answer on the same shots.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from clap_edge.core.errors import ClapEdgeError, ImageError
from clap_edge.core.images import is_image_file
from clap_edge.core.probe import METHODS, Probe, ProbeConfig, fit_probe
from clap_edge.export.bundle import Bundle, ClassMatrix, rewrite_classes
from clap_edge.runtime.classifier import Classifier

__all__ = ["AdaptConfig", "Shots", "read_shots", "adapt_bundle"]


@dataclass(frozen=True)
class AdaptConfig:
    method: str = "linear"
    blend: float = 1.0  # weight of the few-shot logits; 1 - blend on the bundle's zero-shot logits
    seed: int = 0
    holdout: float = 0.2  # share of each class's shots left out by the held-out check
    backend: str = "auto"
    threads: int | None = None
    probe: ProbeConfig | None = None  # default: the authors' settings, with method and seed from above

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ClapEdgeError(f"--method {self.method!r}: not one of {', '.join(METHODS)}")
        if not 0.0 <= self.blend <= 1.0:
            raise ClapEdgeError(f"--blend {self.blend}: must lie in [0, 1] (1: few-shot only)")
        if not 0.0 <= self.holdout < 1.0:
            raise ClapEdgeError(f"holdout {self.holdout}: must lie in [0, 1)")

    def probe_config(self) -> ProbeConfig:
        return replace(self.probe or ProbeConfig(), method=self.method, seed=self.seed)


@dataclass
class Shots:
    """The shot files, class by class, and their class indices into ``class_names``."""

    class_names: list[str]
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def per_class(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {c: int(n) for c, n in zip(self.class_names, counts)}


def read_shots(folder: str | os.PathLike, known: list[str] = ()) -> Shots:
    """``folder/<class>/*`` -> :class:`Shots`; every problem is one error naming the folder or file."""
    root = Path(folder)
    if not root.is_dir():
        raise ClapEdgeError(f"{root}: no such folder (expected {root}/<class>/*.jpg)")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise ClapEdgeError(f"{root}: no class folders (expected {root}/<class>/*.jpg)")
    stray = sorted(f.name for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    if stray:
        raise ClapEdgeError(f"{root / stray[0]}: a file beside the class folders; put shots in {root}/<class>/")
    by_name = {d.name.replace("_", " "): d for d in dirs}
    names = [c for c in known if c in by_name] + sorted(c for c in by_name if c not in known)
    if len(names) < 2:
        raise ClapEdgeError(f"{root}: only one class folder ({names[0]!r}); a classifier needs two or more classes")
    shots = Shots(names)
    for i, name in enumerate(names):
        files = sorted(f for f in by_name[name].iterdir() if not f.name.startswith("."))
        for f in files:
            if not f.is_file() or not is_image_file(f):
                raise ClapEdgeError(f"{f}: not an image file (shots are .jpg, .png, ... files)")
        if not files:
            raise ClapEdgeError(f"{by_name[name]}: empty class folder (class {name!r} needs at least one shot)")
        shots.paths += files
        shots.labels += [i] * len(files)
    return shots


def embed(classifier: Classifier, paths: list[Path], batch_size: int = 32) -> np.ndarray:
    """The bundle model's ``embedding`` output [N, d] for every file; an unreadable file is an error."""
    out = []
    for path, result in classifier.predict_files(paths, batch_size=batch_size, top_k=1):
        if isinstance(result, ImageError):
            raise ClapEdgeError(str(result))
        out.append(result.embedding)
    return np.stack(out).astype(np.float32)


def class_matrix(probe: Probe, scale: float, zero_shot: ClassMatrix | None, blend: float
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """W [C, d] and b [C] (or None) whose runtime logits ``scale * emb @ W.T + b`` are the (blended) probe's."""
    weight = probe.weight.astype(np.float64) / (scale if probe.bias is not None else 1.0)
    bias = None if probe.bias is None else probe.bias.astype(np.float64)
    if zero_shot is not None and blend < 1.0:
        weight = (1.0 - blend) * zero_shot.weights + blend * weight
        if zero_shot.bias is not None or bias is not None:
            zb = zero_shot.bias if zero_shot.bias is not None else 0.0
            bias = (1.0 - blend) * np.asarray(zb, np.float64) + blend * (bias if bias is not None else 0.0)
    return weight.astype(np.float32), None if bias is None else np.asarray(bias, np.float32)


def adapt_bundle(bundle: str | os.PathLike, shots_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 in_place: bool = False, key: str | os.PathLike | None = None, config: AdaptConfig | None = None,
                 say=lambda line: None) -> dict[str, Any]:
    """Adapt ``bundle`` to the photos in ``shots_dir``; returns the report (``clap-edge adapt --json``)."""
    config = config or AdaptConfig()
    if in_place == (out is not None):
        raise ClapEdgeError("give either --out NEW or --in-place (not both, not neither)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with Classifier.open(bundle, backend=config.backend, threads=config.threads) as clf:
        known = list(clf.class_names)
        shots = read_shots(shots_dir, known)
        zs_all = ClassMatrix.from_bundle(clf.bundle)
        timings["open_s"] = round(time.perf_counter() - start, 3)
        say(f"embedding {len(shots.paths)} shots of {len(shots.class_names)} classes with {clf.runner.name}")
        t = time.perf_counter()
        emb = embed(clf, shots.paths)
        timings["embed_s"] = round(time.perf_counter() - t, 3)
    new = [c for c in shots.class_names if c not in known]
    if config.blend < 1.0 and new:
        raise ClapEdgeError(f"--blend {config.blend} needs zero-shot weights for every class; {new} are new to the "
                            "bundle (add them first with `clap-edge classes --add`, or use --blend 1)")
    rows = [known.index(c) for c in shots.class_names] if not new else None
    zero_shot = None if rows is None else ClassMatrix(zs_all.weights[rows],
                                                      None if zs_all.bias is None else zs_all.bias[rows], zs_all.scale)
    labels = np.asarray(shots.labels)
    t = time.perf_counter()
    check = held_out_check(emb, labels, shots.class_names, known, zs_all, zero_shot, config)
    timings["held_out_check_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    probe = fit_probe(emb, labels, len(shots.class_names), config.probe_config())
    weight, bias = class_matrix(probe, zs_all.scale, zero_shot, config.blend)
    timings["fit_s"] = round(time.perf_counter() - t, 3)
    provenance = {"source": "clap-edge adapt", "method": config.method, "blend": config.blend, "seed": config.seed,
                  "shots_per_class": shots.per_class(), "probe_epochs_run": probe.epochs_run}
    t = time.perf_counter()
    target = rewrite_classes(bundle, out, class_names=shots.class_names, class_matrix=weight, bias=bias,
                             provenance=provenance, key=key, in_place=in_place)
    timings["write_s"] = round(time.perf_counter() - t, 3)
    timings["total_s"] = round(time.perf_counter() - start, 3)
    return {"bundle": str(bundle), "out": str(target), "classes": shots.class_names, "new_classes": new,
            "dropped_classes": [c for c in known if c not in shots.class_names], "shots_per_class": shots.per_class(),
            "method": config.method, "blend": config.blend, "seed": config.seed, "bias": bias is not None,
            "probe": {**config.probe_config().settings(), "epochs_run": probe.epochs_run,
                      "best_epoch": probe.best_epoch},
            "held_out_check": check, "signed": key is not None, "timings_s": timings}


def held_out_check(emb: np.ndarray, labels: np.ndarray, names: list[str], known: list[str], zs_all: ClassMatrix,
                   zero_shot: ClassMatrix | None, config: AdaptConfig) -> dict[str, Any]:
    """Fit without a seeded ``holdout`` share of each class's shots; top-1 on them, and the bundle's zero-shot."""
    rng = np.random.default_rng([config.seed, 1])
    held = np.zeros(len(labels), bool)
    for c in range(len(names)):
        idx = np.flatnonzero(labels == c)
        if len(idx) >= 2:
            held[rng.choice(idx, size=max(1, int(round(config.holdout * len(idx)))), replace=False)] = True
    if not held.any() or config.holdout == 0:
        return {"shots": 0, "note": "no class has two or more shots: nothing to hold out"}
    fit = ~held
    if len(set(labels[fit].tolist())) < len(names):
        return {"shots": int(held.sum()), "note": "a class would have no shot left to fit on: skipped"}
    probe = fit_probe(emb[fit], labels[fit], len(names), config.probe_config())
    weight, bias = class_matrix(probe, zs_all.scale, zero_shot, config.blend)
    adapted = ClassMatrix(weight, bias, zs_all.scale).logits(emb[held]).argmax(axis=1)
    out = {"shots": int(held.sum()), "adapted_top1": round(float((adapted == labels[held]).mean() * 100), 2)}
    knows = np.asarray([names[y] in known for y in labels[held]])
    if knows.any():  # the bundle as it was, over all its classes, on the held-out shots of classes it knows
        before = np.asarray(known)[zs_all.logits(emb[held][knows]).argmax(axis=1)]
        truth = np.asarray(names)[labels[held][knows]]
        out.update(zero_shot_top1=round(float((before == truth).mean() * 100), 2), zero_shot_shots=int(knows.sum()))
    return out
