"""Shared pytest fixtures. Keep edits small and additive: several test files rely on these."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory):
    """A clap-edge-tiny bundle (random init, 5 classes, with model.int8.onnx and model.pt2), built once."""
    import torch

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("runtime") / "tiny-bundle"
    return export_bundle(ExportConfig(out=out, model_name="clap-edge-tiny", classes=["cat", "dog", "car", "tree", "boat"],
                                      int8=True))


@pytest.fixture(scope="module")
def tiny():
    """A seeded random-init clap-edge-tiny LoadedModel; one per test module (tests may move or wrap it)."""
    import torch

    from clap_edge.models import load_model

    torch.manual_seed(0)
    return load_model("clap-edge-tiny")


TINY_CLASSES = ["cat", "dog", "bird", "fish"]


@pytest.fixture(scope="session")
def tiny_head_path(tmp_path_factory):
    """A clap-edge-tiny CLAP head (alpha 0.3) with non-zero weights, so folding it changes the outputs."""
    import torch

    from clap_edge.head import CLAPHead, HeadConfig

    torch.manual_seed(1)
    head = CLAPHead(HeadConfig(in_dim=64, latent_dim=32, alpha=0.3, model_name="clap-edge-tiny",
                               class_names=list(TINY_CLASSES)))
    torch.nn.init.normal_(head.projection.weight, std=0.2)
    return head.save(tmp_path_factory.mktemp("head") / "head.safetensors")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_head_path):
    """A clap-edge-tiny bundle with a CLAP head (fp32 + int8 + model.pt2), built once for the session."""
    import torch

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export") / "tiny-bundle"
    return export_bundle(ExportConfig(out=out, head=tiny_head_path, int8=True))


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs (root in a container that allows mounts); skipped where it cannot be mounted."""
    import subprocess

    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched full-disk test covers the logic")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """A folder with two signing key pairs made by ``clap-edge keygen``: alice.pem/.pub and mallory.pem/.pub."""
    pytest.importorskip("model_signing", reason="signing needs the [sign] extra")
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    root = tmp_path_factory.mktemp("keys")
    for name in ("alice", "mallory"):
        result = CliRunner().invoke(main, ["keygen", str(root / name)])
        assert result.exit_code == 0, result.output
    return root
