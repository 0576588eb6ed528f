"""Runtime: preprocessing, backends, the batching classifier and benchmarks.

Runs an exported bundle with numpy + PIL + the chosen backend's library only. Public
names are resolved lazily so that importing this package imports no backend library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Classifier": "clap_edge.runtime.classifier",
    "Prediction": "clap_edge.runtime.classifier",
    "BatchingClassifier": "clap_edge.runtime.batching",
    "available_backends": "clap_edge.runtime.backends",
    "create_runner": "clap_edge.runtime.backends",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clap_edge.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
