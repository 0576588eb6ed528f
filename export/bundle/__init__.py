"""The bundle: the one contract between export and runtime (ARCHITECTURE.md, "The bundle").

Torch-free (standard library, numpy, safetensors): the runtime opens bundles on devices
that have neither torch nor open_clip. ``manifest.py`` holds the one frozen, typed :class:`Manifest`
(what :attr:`Bundle.manifest` is and what :class:`BundleWriter` takes) and its checks,
``manifest.schema.json`` the same rules for other languages, ``names.py`` the fixed names and the schema
version, ``classes.py`` the class matrix the runtimes apply (schema 4: classes are data) and
:func:`rewrite_classes`, ``engines.py`` the engine sidecars (``sidecar.schema.json``) and engine selection. The runtime
imports nothing else from ``clap_edge.export`` (tests/test_architecture.py).
"""

from clap_edge.export.bundle.manifest import (ClassesInfo, EngineEntry, FileEntry, HeadInfo, Manifest, ModelInfo,
                                                PreprocessCfg, TensorSpec, TextInfo)
from clap_edge.export.bundle.names import (CLASSES_BIAS, CLASSES_FILE, CLASSES_TENSOR, MANIFEST, MANIFEST_DIGEST, REQUIRED_KEYS,
                                             SCHEMA_VERSION, SIGNATURE_FILE, VARIANT_FILES, sha256_file)
from clap_edge.export.bundle.reader import Bundle, TarLimits
from clap_edge.export.bundle.writer import BundleWriter, add_to_bundle, pack_tar, write_manifest
from clap_edge.export.bundle.classes import ClassMatrix, rewrite_classes

__all__ = ["Bundle", "BundleWriter", "TarLimits", "pack_tar", "write_manifest", "add_to_bundle", "sha256_file",
           "SCHEMA_VERSION", "MANIFEST", "MANIFEST_DIGEST", "SIGNATURE_FILE", "CLASSES_FILE", "CLASSES_TENSOR",
           "CLASSES_BIAS", "ClassMatrix", "rewrite_classes", "ClassesInfo", "TextInfo",
           "VARIANT_FILES", "REQUIRED_KEYS", "Manifest", "ModelInfo", "HeadInfo", "PreprocessCfg", "TensorSpec",
           "FileEntry", "EngineEntry"]
