"""Top-1 of a bundle's model variants on a labelled image folder, through any runtime backend.

The image side runs exactly what a device runs (fp32, int8, ...), so the accuracy an
export costs is measured the same way as the model's own accuracy. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clap_edge.core.datasets import DomainImages
from clap_edge.core.errors import ClapEdgeError
from clap_edge.core.metrics import Top1, paired_bootstrap, paired_difference_ci
from clap_edge.runtime.classifier import Classifier


@dataclass
class BundleScores:
    """Per domain: predicted class index per image (-1 for an unreadable one) and the labels."""

    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    failed: list[str] = field(default_factory=list)

    def correct(self, domain: str) -> np.ndarray:
        return self.predictions[domain] == self.labels[domain]


def score_bundle(classifier: Classifier, domains: dict[str, DomainImages], class_names: list[str],
                 batch_size: int = 64, workers: int = 2, progress: bool = False) -> BundleScores:
    """Classify every image of every domain; broken images count as wrong and are listed."""
    from rich.console import Console
    from rich.progress import track

    index = _class_index(classifier, class_names)
    preds, labels, failed = {}, {}, []
    label = f"{classifier.runner.name} on {classifier.bundle.root.name}"
    for name, images in track(domains.items(), label, disable=not progress, console=Console(stderr=True)):
        out = np.full(len(images), -1, dtype=np.int64)
        for i, (path, result) in enumerate(classifier.predict_files(images.paths, batch_size, workers, top_k=1)):
            if isinstance(result, Exception):
                failed.append(path)
            else:
                out[i] = index[result.labels[0]]
        preds[name], labels[name] = out, np.asarray(images.labels)
    return BundleScores(preds, labels, failed)


def compare_variants(scores: dict[str, BundleScores], n_boot: int = 1000, seed: int = 0
                     ) -> dict[str, dict[str, Top1]]:
    """Per domain, top-1 and paired-bootstrap CI of every scored variant (same images for all)."""
    first = next(iter(scores.values()))
    return {d: paired_bootstrap({k: s.correct(d) for k, s in scores.items()}, n_boot, seed) for d in first.labels}


def agreement(a: BundleScores, b: BundleScores) -> dict[str, float]:
    """Per domain, percent of images where two variants predict the same class (e.g. int8 vs fp32)."""
    return {d: float((a.predictions[d] == b.predictions[d]).mean() * 100) for d in a.predictions}


def _class_index(classifier: Classifier, class_names: list[str]) -> dict[str, int]:
    missing = [c for c in classifier.class_names if c not in class_names]
    if missing:
        raise ClapEdgeError(f"bundle {classifier.bundle.root} has classes the dataset does not: {missing}")
    return {c: class_names.index(c) for c in classifier.class_names}


# Bundle variant -> the runtime backend that runs it on a CPU.
VARIANT_BACKENDS = {"fp32": "onnxruntime", "int8": "onnxruntime-int8"}


@dataclass
class BundleEval:
    """What :func:`evaluate_bundles` measured. Keys are ``<bundle name>-<variant>`` (e.g. ``clap-int8``)."""

    table: dict[str, dict[str, Top1]]  # domain -> key -> top-1 with paired CI
    agreement: dict[str, dict[str, float]]  # bundle name -> domain -> int8 vs fp32 agreement (%)
    scores: dict[str, BundleScores]
    failed: list[str]

    def difference(self, a: str, b: str, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, tuple]]:
        """Per domain, top-1 of ``a`` minus ``b`` in points, with its paired-bootstrap CI."""
        return {d: paired_difference_ci(self.scores[a].correct(d), self.scores[b].correct(d), n_boot, seed)
                for d in self.table}


def evaluate_bundles(dataset_split: str, bundles: dict[str, str], variants: tuple[str, ...] = ("fp32", "int8"),
                     per_class: int | None = None, threads: int | None = None, n_boot: int = 1000, seed: int = 0,
                     progress: bool = False) -> BundleEval:
    """Score every (bundle, variant) on one split folder: top-1 per domain, int8 agreement, failures.

    Each entry of ``variants`` is a bundle variant (``fp32``, ``int8``: run by their CPU backend)
    or a backend name (``openvino``, ``torch``, ...), which runs the model file that backend
    reads. Entries the bundle cannot serve are skipped.
    """
    from clap_edge.runtime.backends import runner_class
    from clap_edge.core.datasets import scan_domains
    from clap_edge.export.bundle import Bundle

    scores: dict[str, BundleScores] = {}
    class_names: list[str] | None = None
    domains: dict[str, DomainImages] = {}
    for name, path in bundles.items():
        bundle = Bundle.open(path)
        if class_names is None:
            class_names, domains = scan_domains(dataset_split, bundle.class_names)
            domains = {d: images.head(per_class) for d, images in domains.items()}
        for variant in variants:
            backend = VARIANT_BACKENDS.get(variant, variant)
            if not runner_class(backend).supports(bundle):
                continue
            with Classifier.open(path, backend=backend, threads=threads) as clf:
                scores[f"{name}-{variant}"] = score_bundle(clf, domains, class_names, progress=progress)
    if not scores:
        raise ClapEdgeError(f"none of the bundles has any of the variants {list(variants)}")
    agree = {name: agreement(scores[f"{name}-int8"], scores[f"{name}-fp32"])
             for name in bundles if f"{name}-int8" in scores and f"{name}-fp32" in scores}
    failed = sorted({p for s in scores.values() for p in s.failed})
    return BundleEval(compare_variants(scores, n_boot, seed), agree, scores, failed)
