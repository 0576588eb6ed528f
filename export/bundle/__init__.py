"""The bundle: the one contract between export and runtime (ARCHITECTURE.md, "The bundle").

Torch-free (standard library, numpy, safetensors): the runtime opens bundles on devices
that have neither torch nor open_clip.
"""

from clap_edge.export.bundle.names import (CLASSES_FILE, CLASSES_TENSOR, MANIFEST, REQUIRED_KEYS, SCHEMA_VERSION,
                                             VARIANT_FILES, sha256_file)
from clap_edge.export.bundle.reader import Bundle
from clap_edge.export.bundle.writer import BundleWriter, pack_tar

__all__ = ["Bundle", "BundleWriter", "pack_tar", "sha256_file", "SCHEMA_VERSION", "MANIFEST", "CLASSES_FILE",
           "CLASSES_TENSOR", "VARIANT_FILES", "REQUIRED_KEYS"]
