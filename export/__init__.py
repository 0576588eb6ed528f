"""Export: the fused model to ONNX, its variants, parity checks and the bundle format.

Only the torch-free bundle format is imported eagerly; the runtime reads bundles
through it on devices without torch. ``ExportConfig`` and ``export_bundle`` (which
need torch) load on first use.
"""

from clap_edge.export.bundle import SCHEMA_VERSION, Bundle, BundleWriter

__all__ = ["SCHEMA_VERSION", "Bundle", "BundleWriter", "ExportConfig", "export_bundle"]

_LAZY = {"ExportConfig": "clap_edge.export.builders.exporter", "export_bundle": "clap_edge.export.builders.exporter"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
