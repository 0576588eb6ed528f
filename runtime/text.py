"""TextEncoder: class embeddings from words on the device, torch-free (numpy + onnxruntime).

The bundle's ``text.onnx`` (``export --text-encoder``) maps token ids to the normalised, head-projected text
embedding; :mod:`clap_edge.core.tokenizer` makes the ids exactly as open_clip's SimpleTokenizer does from the
bundle's BPE file. Class embeddings are prompt ensembles as :func:`clap_edge.fuse.class_embeddings` builds
them: every class through every template, each template's embedding normalised, averaged, renormalised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clap_edge.core.classnames import format_template
from clap_edge.core.errors import BundleError, PromptError
from clap_edge.core.tokenizer import SimpleTokenizer, TokenizerError, TokenizerSpec
from clap_edge.export.bundle import Bundle
from clap_edge.export.bundle.names import INPUT_TOKENS, OUTPUT_TEXT_EMBEDDING

__all__ = ["TextEncoder", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = ("a photo of a {c}.",)  # as clap_edge.fuse.DEFAULT_TEMPLATES
BATCH = 256  # prompts per text.onnx call


class TextEncoder:
    """Open with :meth:`open` (a context manager); :meth:`class_embeddings` gives the class matrix [C, d]."""

    def __init__(self, bundle: Bundle, session: Any, tokenizer: SimpleTokenizer):
        self.bundle, self.session, self.tokenizer = bundle, session, tokenizer

    @classmethod
    def open(cls, bundle: str | os.PathLike | Bundle, precision: str = "fp32", threads: int | None = None
             ) -> "TextEncoder":
        import onnxruntime as ort

        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle)
        text = bundle.manifest.text
        if text is None:
            raise BundleError(f"{bundle.label}: no text encoder in this bundle; export it with "
                              "`clap-edge export ... --text-encoder` to change classes from words on the device")
        variants = text.extra.get("variants") or {"fp32": text.file}
        if precision not in variants:
            raise BundleError(f"{bundle.label}: no {precision!r} text encoder (it has: {', '.join(variants)})")
        try:
            spec = TokenizerSpec.from_json(text.tokenizer, text.context_length)
            bpe = spec.files.get("bpe")
            if bpe is None:
                raise TokenizerError("the tokenizer names no 'bpe' file")
            tokenizer = SimpleTokenizer.from_spec(spec, bundle.file(bpe))
        except TokenizerError as e:
            raise BundleError(f"{bundle.label}: {e}") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        model = bundle.file(variants[precision])  # sha256-checked before it is loaded
        try:
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"{bundle.label}: ONNX Runtime cannot load {Path(model).name}: "
                              f"{str(e).strip().splitlines()[0]}") from None
        return cls(bundle, session, tokenizer)

    def __enter__(self) -> "TextEncoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.session = None

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(self.bundle.manifest.templates) or DEFAULT_TEMPLATES

    def tokenize_checked(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids [N, context_length]; a prompt that would be truncated is refused (as the export refuses it)."""
        limit = self.tokenizer.context_length
        for text in texts:
            n = len(self.tokenizer.encode(text)) + 2
            if n > limit:
                raise PromptError(f"text {text!r} needs {n} tokens but the model's text context holds {limit}; "
                                  "shorten the class name or the template")
        return self.tokenizer(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """text.onnx's embeddings [N, d] (normalised, head-projected) of ``texts``."""
        tokens = self.tokenize_checked(list(texts))
        chunks = [self.session.run([OUTPUT_TEXT_EMBEDDING], {INPUT_TOKENS: tokens[i:i + BATCH]})[0]
                  for i in range(0, len(tokens), BATCH)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, self.bundle.embed_dim), np.float32)

    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """The L2-normalised class matrix [C, d]: per-template embeddings normalised, averaged, renormalised."""
        names, templates = list(class_names), list(templates or self.templates)
        if not names:
            raise PromptError("no class names to embed")
        if not templates:
            raise PromptError("no prompt templates")
        z = self.embed([format_template(t, c) for c in names for t in templates])
        z = _normalize(z).reshape(len(names), len(templates), -1).mean(axis=1)
        return _normalize(z)


def _normalize(z: np.ndarray) -> np.ndarray:
    return (z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
