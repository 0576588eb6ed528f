"""The fused classifier: image batch -> logits; its image part exports as one graph.

    image -> open_clip encode_image -> CLAP head at alpha -> L2 normalise -> logit_scale * emb @ classes.T

The exported graph (:meth:`FusedClassifier.image_model`) ends at the normalised embedding: the class
matrix is data in the bundle (schema 4), applied by the runtime, so classes change without a re-export.

The head's inference scale ``alpha`` is folded into its projection weight, so the
exported graph has no extra multiply; ``alpha == 0`` (or no head) drops the head and
gives plain CLIP through the same pipeline. Class embeddings are built as open_clip's
``build_zero_shot_classifier`` builds prompt ensembles, with the head applied to each
text embedding before it is normalised.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clap_edge.core.classnames import format_template  # noqa: F401  (torch-free: the runtime fills templates too)
from clap_edge.core.errors import PromptError
from clap_edge.head import CLAPHead

DEFAULT_TEMPLATES = ("a photo of a {c}.",)


def fold_head(head: CLAPHead | None, alpha: float | None = None) -> CLAPHead | None:
    """A copy of ``head`` with ``alpha`` folded into P's weight (and alpha 1); None when alpha is 0.

    f_alpha(z) = z + alpha * P(L(act(z))) = z + (alpha P)(L(act(z))): one fewer op in the graph.
    """
    if head is None:
        return None
    alpha = head.alpha if alpha is None else float(alpha)
    if alpha == 0.0 and head.config.out_dim == head.config.in_dim:
        return None  # the identity: plain CLIP
    folded = copy.deepcopy(head).eval()
    with torch.no_grad():
        folded.projection.weight.mul_(alpha)
    folded.alpha = 1.0
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


@torch.no_grad()
def class_embeddings(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    head: CLAPHead | None = None,
    alpha: float | None = None,
    batch_classes: int = 16,
) -> torch.Tensor:
    """L2-normalised class embeddings [C, d]: each class through every template, the text tower, the head.

    As open_clip's prompt ensembles: normalise each template's embedding, average, renormalise.
    """
    from clap_edge.models import tokenize_checked

    if not class_names:
        raise PromptError("no class names to embed")
    if not templates:
        raise PromptError("no prompt templates")
    folded = fold_head(head, alpha)
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(class_names), batch_classes):
        names = class_names[start : start + batch_classes]
        texts = [format_template(t, c) for c in names for t in templates]
        z = model.encode_text(tokenize_checked(tokenizer, texts).to(device)).float()
        if folded is not None:
            z = folded(z)
        z = F.normalize(z, dim=-1).reshape(len(names), len(templates), -1).mean(dim=1)
        chunks.append(F.normalize(z, dim=-1))
    return torch.cat(chunks).cpu()


class _EncodeImage(nn.Module):
    """Fallback for open_clip models whose ``visual`` is not the whole image path (e.g. CoCa)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(image)


def image_tower(clip: nn.Module) -> nn.Module:
    """The module computing ``clip.encode_image`` (unnormalised): ``clip.visual`` for CLIP/CustomTextCLIP."""
    if type(clip).__name__ in ("CLIP", "CustomTextCLIP") and isinstance(getattr(clip, "visual", None), nn.Module):
        return clip.visual
    return _EncodeImage(clip)


def l2_normalize(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """F.normalize written with a sum of squares: it exports as ReduceSum, which every opset >= 13
    runs (ReduceL2 changed signature in opset 18, so F.normalize pins the graph to 18)."""
    return z * torch.rsqrt((z * z).sum(dim=-1, keepdim=True).clamp_min(eps * eps))


class FusedClassifier(nn.Module):
    """image [N,3,H,W] -> (logits [N,C], embedding [N,d]); everything the runtime needs in one module."""

    def __init__(
        self,
        clip: nn.Module,
        classes: torch.Tensor,
        head: CLAPHead | None = None,
        alpha: float | None = None,
    ):
        super().__init__()
        # Only the image tower: the text tower's weights (token table included) would bloat model.pt2.
        self.image_encoder = image_tower(clip).eval()
        self.head = fold_head(head, alpha)
        self.alpha = 0.0 if head is None else float(head.alpha if alpha is None else alpha)
        self.register_buffer("classes", F.normalize(classes.detach().float(), dim=-1).T.contiguous())
        # exp() done once here: the graph multiplies by a constant.
        self.register_buffer("logit_scale", clip.logit_scale.detach().float().exp().reshape(()))
        bias = getattr(clip, "logit_bias", None)
        self.register_buffer("logit_bias", None if bias is None else bias.detach().float().reshape(()))
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return int(self.classes.shape[1])

    @property
    def embed_dim(self) -> int:
        return int(self.classes.shape[0])

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        z = self.image_encoder(image)
        if self.head is not None:
            z = self.head(z)
        return l2_normalize(z)

    def image_model(self) -> nn.Module:
        """image -> embedding [N, d]: the part that is exported (model.onnx, model.pt2)."""
        return _ImageEmbedding(self).eval()

    def class_bias(self) -> torch.Tensor | None:
        """The per-class bias the bundle stores ([C], the model's scalar logit_bias), or None."""
        return None if self.logit_bias is None else self.logit_bias.expand(self.num_classes).clone()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(image)
        logits = self.logit_scale * embedding @ self.classes
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, embedding


class _ImageEmbedding(nn.Module):
    def __init__(self, fused: FusedClassifier):
        super().__init__()
        self.image_encoder, self.head = fused.image_encoder, fused.head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        z = self.image_encoder(image)
        if self.head is not None:
            z = self.head(z)
        return l2_normalize(z)


def build_fused(
    loaded,
    class_names: Sequence[str],
    head: CLAPHead | None = None,
    alpha: float | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> FusedClassifier:
    """FusedClassifier from a :class:`clap_edge.models.LoadedModel`, building its class embeddings."""
    classes = class_embeddings(loaded.model, loaded.tokenizer, class_names, templates, head, alpha)
    return FusedClassifier(loaded.model, classes, head, alpha).eval()
