"""The LiteRT runner: the bundle's .tflite in ai-edge-litert's interpreter, on CPU (torch-free).

Precisions (precision -> bundle variant -> file): ``fp32`` -> ``litert-fp32`` -> ``model.tflite``;
``int8`` -> ``litert-int8`` -> ``model.int8.tflite`` (litert-torch's PT2E static int8). The model takes
batch 1, so a batch runs image by image.
"""

from __future__ import annotations

import numpy as np

from clap_edge.core.errors import BundleError
from clap_edge.runtime.backends.base import Runner
from clap_edge.runtime.backends.litert.loader import load_signature

__all__ = ["LiteRTRunner"]


class LiteRTRunner(Runner):
    name = "litert"
    pip_extra = "litert"
    library = "ai_edge_litert"
    precisions = {"fp32": "litert-fp32", "int8": "litert-int8"}

    def __init__(self, bundle, options=None):
        super().__init__(bundle, options)
        self._runner = None

    def activate_impl(self) -> None:
        self._runner, self._input, self._output = load_signature(self.bundle, self.variant, self.options.threads)
        self.precision = self.requested_precision

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        embedding = np.concatenate([np.array(self._runner(**{self._input: image[None]})[self._output], np.float32)
                                    for image in batch])
        want = (len(batch), self.bundle.manifest.embed_dim)
        if embedding.shape != want:
            raise BundleError(f"{self.bundle.root}: {self.bundle.variants[self.variant]} returns shape "
                              f"{embedding.shape}, the manifest says (embedding) {want}")
        return embedding

    def deactivate_impl(self) -> None:
        self._runner = None
