"""A real classifier whose model gives NaN for one kind of image: drives the shared per-image error policy
(runtime.batching.predict_each) through the public Classifier API, in every front end."""

from __future__ import annotations

import numpy as np

from clap_edge.runtime.backends.base import RunnerOutput

WHITE_MIN = 1.5  # a white image preprocesses to > 1.8 everywhere (CLIP mean / std); random images do not


class NaNForWhite:
    """Wraps a real runner: the logits of a white image's row are NaN; every other row is the real output."""

    def __init__(self, inner):
        self.inner = inner
        self.batch_sizes: list[int] = []

    def infer(self, batch: np.ndarray) -> RunnerOutput:
        out = self.inner.infer(batch)
        white = batch.reshape(len(batch), -1).min(axis=1) > WHITE_MIN
        logits = out.logits.copy()
        logits[white] = np.nan
        self.batch_sizes.append(len(batch))
        return RunnerOutput(logits=logits, embedding=out.embedding)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def nan_for_white(clf):
    """A Classifier on ``clf``'s bundle and runner (not to be closed: ``clf`` owns them) with NaNForWhite."""
    from clap_edge.runtime import Classifier

    return Classifier(clf.bundle, NaNForWhite(clf.runner))


def white_png(path) -> str:
    from PIL import Image

    Image.new("RGB", (50, 40), (255, 255, 255)).save(path)
    return str(path)
