"""An image file on disk -> Classifier (a bundle on disk) against an independent reference built from open_clip
alone: its own eval transform, the torch model's encode_image / encode_text, its tokenizer, and the CLAP head
written out by hand in torch. Catches a wrong preprocessing setting on its way from the manifest to the
Classifier (mean/std, interpolation, size), a wrong head fold, class embeddings or logit scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "car", "tree", "boat"]
ALPHA = 0.3
TEMPLATE = "a photo of a {}."  # clap_edge.fuse.DEFAULT_TEMPLATES, restated: the reference does not import ours


def _image(path: Path, w: int, h: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx * yy) % 256], axis=-1)
    Image.fromarray((base * 0.6 + rng.integers(0, 256, (h, w, 3)) * 0.4).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random clap-edge-tiny (weights in a local .safetensors), a head with non-zero weights, and the bundle."""
    from safetensors.torch import save_file

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle
    from clap_edge.head import CLAPHead, HeadConfig

    tmp = tmp_path_factory.mktemp("e2e")
    open_clip.add_model_config(ROOT / "clap_edge" / "model_configs" / "clap-edge-tiny.json")
    torch.manual_seed(3)
    model = open_clip.create_model("clap-edge-tiny").eval()
    weights = tmp / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    head = CLAPHead(HeadConfig(in_dim=64, latent_dim=32, alpha=ALPHA, model_name="clap-edge-tiny",
                               pretrained=str(weights), class_names=CLASSES))
    torch.nn.init.normal_(head.linear.weight, std=0.3)
    torch.nn.init.normal_(head.linear.bias, std=0.3)
    torch.nn.init.normal_(head.projection.weight, std=0.3)
    head_path = head.save(tmp / "head.safetensors")
    bundle = export_bundle(ExportConfig(out=tmp / "bundle", head=head_path, torch_program=False))
    images = [_image(tmp / "wide.png", 97, 61, 0), _image(tmp / "tall.png", 45, 130, 1)]
    return model, {k: v.clone() for k, v in head.state_dict().items()}, bundle, images


def _head_by_hand(z: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = torch.nn.functional.silu(z) @ state["linear.weight"].T + state["linear.bias"]
    return z + ALPHA * hidden @ state["projection.weight"].T


def _reference_logits(model, state, images, transform) -> np.ndarray:
    from PIL import Image

    tokenizer = open_clip.get_tokenizer("clap-edge-tiny")
    with torch.no_grad():
        text = _head_by_hand(model.encode_text(tokenizer([TEMPLATE.format(c) for c in CLASSES])), state)
        text = text / text.norm(dim=-1, keepdim=True)
        pixels = torch.stack([transform(Image.open(p)) for p in images])
        img = _head_by_hand(model.encode_image(pixels), state)
        img = img / img.norm(dim=-1, keepdim=True)
        return (model.logit_scale.exp() * img @ text.T).numpy()


def _transform(**changes):
    cfg = open_clip.transform.PreprocessCfg(**{**open_clip.get_model_preprocess_cfg(_model_for_cfg()), **changes})
    return open_clip.transform.image_transform_v2(cfg, is_train=False)


def _model_for_cfg():
    torch.manual_seed(0)
    return open_clip.create_model("clap-edge-tiny")


@pytest.mark.slow
def test_image_file_through_classifier_matches_open_clip_torch_and_the_head_by_hand(setup):
    from clap_edge.runtime import Classifier

    model, state, bundle, images = setup
    _, _, eval_transform = open_clip.create_model_and_transforms("clap-edge-tiny")  # open_clip's own eval transform
    expected = _reference_logits(model, state, images, eval_transform)
    with Classifier.open(bundle, backend="onnxruntime", threads=1) as clf:
        got = np.stack([p.logits for p in clf.predict([str(p) for p in images], top_k=len(CLASSES))])
    assert np.abs(got - expected).max() < 1e-3, np.abs(got - expected).max()

    # The comparison has teeth: had the Classifier received swapped mean/std, another interpolation or no head,
    # its logits would differ from the reference by far more than the tolerance.
    cfg = open_clip.get_model_preprocess_cfg(_model_for_cfg())
    wrong = {"mean/std swapped": _transform(mean=cfg["std"], std=cfg["mean"]),
             "bilinear": _transform(interpolation="bilinear"),
             "squash": _transform(resize_mode="squash")}
    for name, transform in wrong.items():
        assert np.abs(_reference_logits(model, state, images, transform) - expected).max() > 1e-2, name
    no_head = {k: (v * 0 if k == "projection.weight" else v) for k, v in state.items()}
    assert np.abs(_reference_logits(model, no_head, images, eval_transform) - expected).max() > 1e-2
