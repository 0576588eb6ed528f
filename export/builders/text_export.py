"""The text side in the bundle (``export --text-encoder``): text.onnx, its int8 variant, the tokenizer's files.

    token ids [N, context_length] int64 -> open_clip text tower -> CLAP head at the bundle's alpha -> L2 norm

exactly what each template's embedding is made of in :func:`clap_edge.fuse.class_embeddings` (which then
averages over templates and renormalises; the runtime does that part: clap_edge.runtime.text). The tokenizer
is open_clip's SimpleTokenizer, reproduced torch-free by :mod:`clap_edge.core.tokenizer` from its BPE file,
which the bundle ships; other tokenizers are refused with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clap_edge.core.errors import BundleError
from clap_edge.core.tokenizer import BPE_FILE, spec_from_open_clip
from clap_edge.export.bundle.names import INPUT_TOKENS, OUTPUT_TEXT_EMBEDDING, TEXT_FILE, TEXT_INT8_FILE, TOKENIZER_DIR

__all__ = ["TextTower", "export_text", "TextExport", "PARITY_TOLERANCE"]

PARITY_TOLERANCE = 1e-5  # fp32 text.onnx vs the torch text embeddings (max |d|), checked at export


class TextTower(nn.Module):
    """tokens -> normalised (head-projected) text embedding; holds only the text tower's weights."""

    def __init__(self, clip: nn.Module, head=None, alpha: float | None = None):
        super().__init__()
        from open_clip.model import CLIP

        from clap_edge.fuse import fold_head

        if not isinstance(clip, CLIP):
            raise BundleError(f"--text-encoder supports open_clip CLIP models (this model is {type(clip).__name__})")
        for name in ("token_embedding", "transformer", "ln_final"):
            setattr(self, name, getattr(clip, name))
        self.positional_embedding = clip.positional_embedding
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.text_pool_type = clip.text_pool_type
        if hasattr(clip, "text_eos_id"):
            self.text_eos_id = clip.text_eos_id
        self.head = fold_head(head, alpha)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        from open_clip.model import CLIP

        from clap_edge.fuse import l2_normalize

        z = CLIP.encode_text(self, tokens).float()  # open_clip's own code, on the text tower's modules
        if self.head is not None:
            z = self.head(z)
        return l2_normalize(z)


@dataclass
class TextExport:
    files: dict[str, Path]  # bundle file name -> staged path
    section: dict[str, Any]  # the manifest's `text` section


def export_text(loaded, head, alpha: float, tmp: Path, int8: bool, say) -> TextExport:
    """Write text.onnx (+ text.int8.onnx) and the tokenizer's BPE file into ``tmp``; parity vs torch recorded."""
    from open_clip.tokenizer import default_bpe

    from clap_edge.core.tokenizer import SimpleTokenizer
    from clap_edge.export.builders.onnx_export import check_onnx, onnx_opset

    spec = spec_from_open_clip(loaded.tokenizer, files={"bpe": f"{TOKENIZER_DIR}/{BPE_FILE}"})
    bpe = Path(getattr(loaded.tokenizer, "bpe_path", None) or default_bpe())
    tower = TextTower(loaded.model, head, alpha).eval()
    tokens = SimpleTokenizer.from_spec(spec, bpe)(_probe_texts())
    say("exporting the text encoder (text.onnx)")
    path = tmp / TEXT_FILE
    _export(tower, torch.from_numpy(tokens[:2]), path)
    check_onnx(path)
    with torch.no_grad():
        reference = tower(torch.from_numpy(tokens)).numpy()
    parity = {"fp32": _parity(reference, path, tokens)}
    if parity["fp32"]["max_abs_diff"] > PARITY_TOLERANCE:
        raise BundleError(f"parity check failed: text.onnx differs from torch by max |d| "
                          f"{parity['fp32']['max_abs_diff']:.3g} (tolerance {PARITY_TOLERANCE:g}); nothing was written")
    files = {TEXT_FILE: path, spec.files["bpe"]: bpe}
    variants = {"fp32": TEXT_FILE}
    if int8:
        from clap_edge.export.builders.variants import quantize_int8

        say("building the text encoder's int8 variant")
        quantize_int8(path, tmp / TEXT_INT8_FILE)
        check_onnx(tmp / TEXT_INT8_FILE)
        files[TEXT_INT8_FILE] = tmp / TEXT_INT8_FILE
        variants["int8"] = TEXT_INT8_FILE
        parity["int8"] = _parity(reference, tmp / TEXT_INT8_FILE, tokens)
    import onnx

    section = {"file": TEXT_FILE, "context_length": spec.context_length, "tokenizer": spec.to_json(),
               "variants": variants, "parity": parity,
               "opset": onnx_opset(onnx.load(str(path), load_external_data=False))}
    return TextExport(files, section)


def _export(tower: TextTower, example: torch.Tensor, path: Path) -> None:
    import contextlib
    import io
    import warnings

    batch = torch.export.Dim("N", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(tower, (example,), dynamic_shapes=({0: batch},), strict=False)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, (example,), input_names=[INPUT_TOKENS],
                                         output_names=[OUTPUT_TEXT_EMBEDDING], dynamo=True, external_data=False,
                                         optimize=True, verbose=False)
    import onnx

    proto = onnx_program.model_proto
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    onnx.save_model(proto, str(path))


def _parity(reference: np.ndarray, path: str | os.PathLike, tokens: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_TEXT_EMBEDDING], {INPUT_TOKENS: tokens})[0]
    cos = float(np.min(np.sum(reference * got, axis=1)))
    return {"max_abs_diff": float(np.abs(reference - got).max()), "min_cosine": round(cos, 7), "n_texts": len(tokens)}


def _probe_texts() -> list[str]:
    """A few prompts of different lengths (one past the context: truncated) for the export's parity check."""
    return ["a photo of a cat.", "a sketch of a golden retriever", "Forklift", "café au lait", "😀 emoji",
            "a painting of the " + "very " * 100 + "long name", "x", "a photo of a {}."]
