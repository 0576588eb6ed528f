"""Shared pytest fixtures. Keep edits small and additive: several test files rely on these."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory):
    """A clap-edge-tiny bundle (random init, 5 classes, with model.int8.onnx and model.pt2), built once."""
    import torch

    from clap_edge.export.exporter import ExportConfig, export_bundle

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("runtime") / "tiny-bundle"
    return export_bundle(ExportConfig(out=out, model_name="clap-edge-tiny", classes=["cat", "dog", "car", "tree", "boat"],
                                      int8=True))
