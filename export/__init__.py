"""Export: the fused model to ONNX, its variants, parity checks and the bundle format.

Only the torch-free bundle format is imported eagerly; the runtime reads bundles
through it on devices without torch.
"""

from clap_edge.export.bundle import SCHEMA_VERSION, Bundle, BundleWriter

__all__ = ["SCHEMA_VERSION", "Bundle", "BundleWriter"]
