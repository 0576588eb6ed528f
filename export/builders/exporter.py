"""export_bundle: a CLAP head (or none) + an open_clip model -> a checked, self-describing bundle.

    cfg = ExportConfig(out="bundle", head="head.safetensors", int8=True)
    export_bundle(cfg)

Steps: load the model, build the fused classifier and its class embeddings, export
ONNX (+ model.pt2), check parity torch vs ONNX Runtime on a calibration batch (fail
and write nothing beyond tolerance), add int8/fp16 variants with their agreement vs
fp32, and write everything through BundleWriter so the directory appears whole or not at all.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clap_edge.core.errors import BundleError, CheckpointError, ClapEdgeError, PromptError
from clap_edge.core.io import staging_tempdir
from clap_edge.core.preprocess import PreprocessCfg
from clap_edge.export.builders.calibration import preprocessor_for
from clap_edge.export.builders.int8_control import DEFAULT_MAX_DROP
from clap_edge.export.bundle import BundleWriter, ClassMatrix
from clap_edge.export.bundle.manifest import ClassesInfo, HeadInfo, Manifest, ModelInfo, TensorSpec, TextInfo
from clap_edge.export.bundle.names import CALIBRATION_FILE, INPUT_IMAGE, OUTPUT_EMBEDDING

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 8
MAX_CALIBRATION_IMAGES = 16


@dataclass
class ExportConfig:
    out: str | os.PathLike
    model_name: str | None = None  # default: the head's metadata model_name
    pretrained: str | None = None  # default: the head's; None without a head: random init (speed work only)
    head: Any = None  # None (plain CLIP, alpha 0), a head .safetensors path, or a CLAPHead
    classes: Sequence[str] | None = None  # default: the head's metadata class_names
    alpha: float | None = None  # default: the head's alpha; 0.0 for no head
    templates: Sequence[str] | None = None  # with "{c}"; default clap_edge.fuse.DEFAULT_TEMPLATES
    opset: int = 17
    int8: bool = False  # model.int8.onnx: dynamic int8 (no calibration)
    int8_static: bool = False  # model.qdq.onnx: static int8, QDQ form, calibrated (ONNX Runtime CPU, TensorRT)
    openvino_int8: bool = False  # model.int8.xml/.bin: NNCF post-training int8 as OpenVINO IR
    fp16: bool = False
    executorch: tuple[str, ...] = ()  # "fp32" / "int8": model.pte / model.int8.pte (XNNPACK; phones, boards)
    litert: tuple[str, ...] = ()  # "fp32" / "int8": model.tflite / model.int8.tflite (LiteRT CPU)
    litert_python: str | None = None  # a Python with litert-torch (default: $CLAP_EDGE_LITERT_PYTHON or this one)
    torch_program: bool = True  # write model.pt2
    text_encoder: bool = False  # text.onnx (+ text.int8.onnx with int8) and the tokenizer: classes on the device
    overwrite: bool = False
    calibration: Any = None  # folder of images, or a float32 array [n,3,H,W] already preprocessed
    calibration_count: int = 64  # images the static quantisers calibrate on (evenly spaced over the folder)
    calibration_method: str = "minmax"  # ONNX Runtime static int8: minmax (measured best), entropy or percentile
    # int8 accuracy control (export/builders/int8_control.py): layers kept in float until top-1 agreement with fp32
    # on validation images (the calibration folder, up to int8_val_count) is >= 1 - int8_max_drop; None: off
    int8_max_drop: float | None = DEFAULT_MAX_DROP
    int8_val_count: int = 512
    eval: str | os.PathLike | None = None  # labelled dataset (toy world layout): drift of every variant vs fp32
    eval_split: str = "test"
    eval_per_class: int | None = None  # at most this many images per class and domain (None: all)
    parity_tolerance: float = 1e-3
    progress: Callable[[str], None] | None = field(default=None, repr=False)


def export_bundle(cfg: ExportConfig) -> Path:
    """Export the fused classifier described by ``cfg`` as a bundle directory; returns its path."""
    import torch

    from clap_edge.fuse import DEFAULT_TEMPLATES, build_fused
    from clap_edge.models import load_model

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise BundleError(f"{out} already exists (pass overwrite=True / --force to replace it)")
    say = cfg.progress or (lambda msg: log.info(msg))
    head, model_name, pretrained, class_names, alpha = _resolve(cfg)
    templates = list(cfg.templates or DEFAULT_TEMPLATES)
    if pretrained is None:
        log.warning("no pretrained weights: %s is randomly initialised (useful for speed work only)", model_name)

    say(f"loading {model_name}")
    loaded = load_model(model_name, pretrained)
    if head is not None and head.config.in_dim != loaded.embed_dim:
        raise CheckpointError(
            f"the head takes {head.config.in_dim}-d embeddings but {model_name} gives {loaded.embed_dim}-d; "
            f"was it trained on another model (its metadata says {head.config.model_name!r})?"
        )
    say(f"embedding {len(class_names)} classes x {len(templates)} templates")
    fused = build_fused(loaded, class_names, head, alpha, templates)
    pre = PreprocessCfg.from_open_clip(loaded.preprocess_cfg)
    calib = _calibration_batch(cfg.calibration, pre)
    image_shape = tuple(int(s) for s in calib.shape[1:])

    from clap_edge.export.builders.flops import flops_per_image
    from clap_edge.export.builders.onnx_export import export_onnx, run_torch
    from clap_edge.export.parity import compare_logits, run_onnx

    with staging_tempdir("export") as tmp:  # named so `clap-edge clean` removes it after a kill
        tmp = Path(tmp)
        say("exporting ONNX")
        example = torch.from_numpy(calib[:2].copy()) if len(calib) >= 2 else torch.from_numpy(np.repeat(calib, 2, 0))
        result = export_onnx(fused.image_model(), example, tmp / "model.onnx", opset=cfg.opset)
        bias = fused.class_bias()
        classes = ClassMatrix(fused.classes.T.contiguous().numpy(), None if bias is None else bias.numpy(),
                              float(fused.logit_scale))

        say("checking parity torch vs ONNX Runtime")
        ref_logits, _ = run_torch(fused, calib)
        fp32_logits, _ = run_onnx(result.path, calib, classes)
        fp32 = compare_logits(ref_logits, fp32_logits)
        if not fp32.within(cfg.parity_tolerance):
            raise BundleError(
                f"parity check failed for {out}: ONNX Runtime differs from torch by max |dlogit| "
                f"{fp32.max_abs_logit_diff:.3g} (tolerance {cfg.parity_tolerance:g}), top-1 agreement "
                f"{fp32.top1_agreement:.1%} on {fp32.n_images} images; nothing was written"
            )
        parity = {"fp32": fp32.as_manifest(tolerance=cfg.parity_tolerance)}
        variants = _build_variants(cfg, result.path, calib, fp32_logits, tmp, say, parity, pre, classes)
        if cfg.executorch or cfg.litert:
            from clap_edge.export.builders.mobile_variants import build_mobile_variants

            variants.update(build_mobile_variants(cfg, fused, result.program, calib, fp32_logits, tmp, say, parity,
                                                  _quantisation_images(cfg, calib, pre) if "int8" in
                                                  (*cfg.executorch, *cfg.litert) else None, classes))
        drift = _score_drift(cfg, result.path, variants, class_names, pre, say, classes)
        text = None
        if cfg.text_encoder:
            from clap_edge.export.builders.text_export import export_text

            text = export_text(loaded, head, alpha, tmp, cfg.int8, say)

        say("writing bundle")
        with BundleWriter(out, overwrite=cfg.overwrite) as writer:
            writer.add_file("model.onnx", result.path)
            for name, path in variants.items():
                writer.add_file(name, path)
            if cfg.torch_program:
                torch.export.save(result.program, str(writer.staging / "model.pt2"))
                writer.add_file("model.pt2")
            if head is not None:
                _save_head(head, alpha, writer.staging / "head.safetensors")
                writer.add_file("head.safetensors")
            writer.add_class_embeddings(classes.weights, classes.bias)
            writer.add_file(CALIBRATION_FILE, _npy_bytes(calib))
            for name, path in (text.files if text else {}).items():
                writer.add_file(name, path)
            writer.manifest = Manifest(
                model=ModelInfo(model_name, pretrained, _head_manifest(head, alpha)),
                embed_dim=fused.embed_dim,
                alpha=alpha,
                logit_scale=float(fused.logit_scale),
                class_names=tuple(class_names),
                templates=tuple(templates),
                preprocess=pre,
                inputs=[TensorSpec(INPUT_IMAGE, ["N", *image_shape])],
                outputs=[TensorSpec(OUTPUT_EMBEDDING, ["N", fused.embed_dim])],
                classes=ClassesInfo(bias=classes.bias is not None,
                                    provenance={"method": "zero-shot-text", "templates": len(templates)}),
                opset=result.opset,
                flops_per_image=flops_per_image(fused, image_shape),
                parity=parity,
                drift=drift or None,
                text=None if text is None else TextInfo(
                    file=text.section["file"], context_length=text.section["context_length"],
                    tokenizer=text.section["tokenizer"],
                    extra={k: v for k, v in text.section.items() if k not in ("file", "context_length", "tokenizer")}),
                files={},  # the writer lists every file it staged, with its sha256
            )  # checked in full (Manifest.from_dict) when the writer writes it
    say(f"wrote {out}")
    return out


# ---- pieces ---------------------------------------------------------------------------


def _resolve(cfg: ExportConfig):
    """(head or None, model_name, pretrained, class_names, alpha) from the config and the head's metadata."""
    from clap_edge.head import CLAPHead
    from clap_edge.prompts import check_unique_class_names

    head = cfg.head
    if head is not None and not isinstance(head, CLAPHead):
        head = CLAPHead.load(head)
    meta = head.config if head is not None else None
    model_name = cfg.model_name or (meta.model_name if meta else None)
    if not model_name:
        raise ClapEdgeError("no model: pass model_name (--model), or a head whose metadata records one")
    if meta and meta.model_name and cfg.model_name and meta.model_name != cfg.model_name:
        log.warning("head was trained on %s but exporting with %s", meta.model_name, cfg.model_name)
    classes = list(cfg.classes) if cfg.classes else (list(meta.class_names) if meta else [])
    if not classes:
        raise PromptError("no class names: pass classes (--classes), or a head whose metadata records them")
    check_unique_class_names(classes)  # equal after Unicode NFC counts as a duplicate
    if head is None:
        if cfg.alpha not in (None, 0, 0.0):
            raise ClapEdgeError(f"alpha={cfg.alpha} needs a head (no head means plain CLIP, alpha 0)")
        alpha = 0.0
    else:
        alpha = float(head.alpha if cfg.alpha is None else cfg.alpha)
    # A head only makes sense on the weights it was trained on: default to them.
    same_model = meta is not None and meta.model_name in (None, model_name)
    pretrained = cfg.pretrained or (meta.pretrained if same_model else None)
    if same_model and meta.pretrained and pretrained != meta.pretrained:
        log.warning("head was trained on pretrained=%s but exporting with %s", meta.pretrained, pretrained)
    return head, model_name, pretrained, classes, alpha


def _build_variants(cfg, fp32_path: Path, calib, fp32_logits, tmp: Path, say, parity,
                    pre: dict[str, Any] | None, classes) -> dict[str, Path]:
    """Reduced-precision copies of model.onnx (bundle file name -> path) with their agreement vs fp32
    on the calibration batch recorded in ``parity`` (keyed by variant name)."""
    from clap_edge.export.builders import int8_control as c
    from clap_edge.export.builders import variants as v
    from clap_edge.export.builders.drift import predictor_for
    from clap_edge.export.builders.onnx_export import check_onnx
    from clap_edge.export.parity import compare_logits

    quant_images = _quantisation_images(cfg, calib, pre) if (cfg.int8_static or cfg.openvino_int8) else None
    val = _validation(cfg, fp32_path, pre, classes) if (cfg.int8 or cfg.int8_static or cfg.openvino_int8) else None
    control: dict[str, dict] = {}

    def onnx_int8(quantise):  # quantise(src, dst, float_nodes) -> dst, under accuracy control where it is on
        def build(src: Path, dst: Path) -> Path:
            if val is None:
                return quantise(src, dst, [])
            path, control[dst.name] = c.control_onnx(
                lambda kept, out: quantise(src, out, kept), [n for n in v.weight_gemms(src)
                                                             if n not in v.output_matmuls(src)],
                lambda model, images: c.batched(predictor_for(model, classes), images), val, dst, tmp, say)
            return path
        return build

    def openvino_int8(src: Path, dst: Path) -> Path:
        (xml, _), control[dst.name] = v.quantize_openvino_int8(src, dst, quant_images, validation=val, classes=classes)
        return xml

    made: dict[str, Path] = {}
    for enabled, key, name, build in (
        (cfg.int8, "int8", "model.int8.onnx", onnx_int8(lambda s, d, kept: v.quantize_int8(s, d, float_nodes=kept))),
        (cfg.int8_static, "qdq", "model.qdq.onnx",
         onnx_int8(lambda s, d, kept: v.quantize_qdq(s, d, quant_images, cfg.calibration_method, float_nodes=kept,
                                                     cache_dir=tmp))),
        (cfg.openvino_int8, "openvino-int8", v.OPENVINO_INT8_XML, openvino_int8),
        (cfg.fp16, "fp16", "model.fp16.onnx", v.convert_fp16),
    ):
        if not enabled:
            continue
        say(f"building {key} variant" + (" (accuracy control)" if val is not None and key != "fp16" else ""))
        path = build(fp32_path, tmp / name)
        if path.suffix == ".onnx":
            check_onnx(path)
        else:  # OpenVINO IR: the weights file travels with the graph
            made[v.OPENVINO_INT8_BIN] = path.with_suffix(".bin")
        report = compare_logits(fp32_logits, predictor_for(path, classes)(calib))
        parity[key] = report.as_manifest("_vs_fp32")
        if key in v.INT8_VARIANTS:  # the CPU, its int8 path, the remedies and the speed vs fp32: auto reads them
            parity[key].update(v.int8_record(fp32_path, path, calib, classes))
            parity[key]["accuracy_control"] = control.get(name) or None
        if key in ("qdq", "openvino-int8"):
            parity[key].update(calibration_images=int(len(quant_images)),
                               calibration_method=cfg.calibration_method if key == "qdq" else "nncf-mixed")
        made[name] = path
    return made


def _validation(cfg, fp32_path: Path, pre, classes):
    """The accuracy control's validation images (the calibration folder or array; never the eval split) and fp32's
    logits on them; None where the control is off or there are no calibration images (dynamic int8 alone)."""
    from clap_edge.export.builders import int8_control as c
    from clap_edge.export.builders.drift import onnx_predictor

    if cfg.int8_max_drop is None:
        return None
    if cfg.calibration is None:
        log.warning("int8 accuracy control is off: it needs validation images (--calibration DIR)")
        return None
    if not 0.0 <= cfg.int8_max_drop < 1.0:
        raise ClapEdgeError(f"int8 max drop must be in [0, 1), got {cfg.int8_max_drop}")
    images = _calibration_subset(cfg, pre, cfg.int8_val_count)
    return c.Validation(images, c.batched(onnx_predictor(fp32_path, classes), images), cfg.int8_max_drop)


def _quantisation_images(cfg, calib: np.ndarray, pre: dict[str, Any] | None) -> np.ndarray:
    """Images the static quantisers calibrate on: the given array, or --calibration-count from the folder."""
    if cfg.calibration is None:
        raise ClapEdgeError("static int8 (int8_static / openvino_int8) needs calibration images: pass a folder of "
                            "representative images as calibration (--calibration DIR)")
    return _calibration_subset(cfg, pre, cfg.calibration_count)


def _calibration_subset(cfg, pre: dict[str, Any] | None, count: int) -> np.ndarray:
    """The first ``count`` of a given calibration array, or ``count`` images evenly spaced over the folder."""
    from clap_edge.export.builders.calibration import calibration_images

    if isinstance(cfg.calibration, np.ndarray):
        return np.ascontiguousarray(cfg.calibration[:count], dtype=np.float32)
    return calibration_images(cfg.calibration, pre, count)


def _score_drift(cfg, fp32_path: Path, variants: dict[str, Path], class_names, pre, say,
                 classes) -> dict[str, Any] | None:
    """With ``cfg.eval``: every reduced-precision variant scored against fp32 (manifest ``drift``)."""
    from clap_edge.export.bundle.names import VARIANT_FILES

    if cfg.eval is None:
        return None
    from clap_edge.export.builders.calibration import load_eval_set
    from clap_edge.export.builders.drift import predictor_for, score_drift

    by_variant = {variant: variants[file] for variant, file in VARIANT_FILES.items() if file in variants}
    if not by_variant:
        log.warning("eval set given but no reduced-precision variant to score (pass int8 / int8_static / ...)")
        return None
    say(f"scoring {', '.join(by_variant)} against fp32 on {cfg.eval}")
    eval_set = load_eval_set(cfg.eval, list(class_names), pre, cfg.eval_split, cfg.eval_per_class)
    return score_drift(eval_set, predictor_for(fp32_path, classes),
                       {k: predictor_for(p, classes) for k, p in by_variant.items()})


def _calibration_batch(source: Any, pre: PreprocessCfg) -> np.ndarray:
    """The fixed batch used for parity: given array, images from a folder, or seeded synthetic images."""
    size = pre.size
    if isinstance(source, np.ndarray):
        batch = np.asarray(source, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, *size):
            raise ClapEdgeError(f"calibration array has shape {list(batch.shape)}, expected [n, 3, {size[0]}, {size[1]}]")
        return np.ascontiguousarray(batch[:MAX_CALIBRATION_IMAGES])
    if source is not None:
        images = _folder_images(Path(source))
    else:
        images = _synthetic_images(CALIBRATION_IMAGES, size)
    preprocess = preprocessor_for(pre)  # what the runtime does
    return np.stack([preprocess(img) for img in images]).astype(np.float32)


def _folder_images(folder: Path) -> list:
    from clap_edge.core.images import list_images, load_image

    if not folder.is_dir():
        raise ClapEdgeError(f"calibration folder {folder} does not exist")
    paths = list_images([folder])
    if not paths:
        raise ClapEdgeError(f"calibration folder {folder} has no images")
    # Evenly spaced over the sorted files, so a class-per-folder tree contributes every class.
    step = max(1, len(paths) // MAX_CALIBRATION_IMAGES)
    return [load_image(p) for p in paths[::step][:MAX_CALIBRATION_IMAGES]]


def _synthetic_images(n: int, size: tuple[int, int]) -> list:
    """Seeded, smooth random images (not white noise, which no real input looks like)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        low = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size[1] + 32, size[0] + 16), Image.BICUBIC)
        images.append(img)
    return images


def _head_manifest(head, alpha: float) -> HeadInfo | None:
    if head is None:
        return None
    return HeadInfo(alpha=alpha, latent_dim=head.config.latent_dim, activation=head.config.activation)


def _save_head(head, alpha: float, path: Path) -> None:
    """The unfolded head, with the inference alpha in its config (so it reloads as exported)."""
    import copy

    saved = copy.deepcopy(head)
    saved.alpha = alpha
    saved.save(path)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
    return buf.getvalue()
