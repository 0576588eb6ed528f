"""Loading open_clip models by ``model_name`` and ``pretrained``, as open_clip's factory does.

``pretrained`` may be an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...), a local
checkpoint file (``.pt``/``.bin`` loaded with ``weights_only=True``, or ``.safetensors``),
an ``hf-hub:org/repo`` id, or ``None`` for random init. Our own configs
(``clap-edge-tiny``, ``clap-edge-toy``) are registered with open_clip on import, the
same way open_clip ships its JSON configs, and ``clap-edge-toy`` has a ``toyworld``
tag whose weights ship inside the package.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.transform import PreprocessCfg

from clap_edge.core.errors import ModelLoadError, PromptError, first_line

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
HF_HUB_PREFIX = "hf-hub:"

# Weights that ship inside the package: (model_name, tag) -> file under WEIGHTS_DIR.
SHIPPED_WEIGHTS = {("clap-edge-toy", "toyworld"): "clap-edge-toy-toyworld.safetensors"}

open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class LoadedModel:
    """An open_clip model with what is needed to use it: its eval preprocessing and tokenizer."""

    model: torch.nn.Module
    preprocess_cfg: PreprocessCfg
    tokenizer: Callable[..., torch.Tensor]
    model_name: str
    pretrained: str | None

    @property
    def embed_dim(self) -> int:
        return text_projection_dim(self.model) or _probe_embed_dim(self)

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", getattr(self.model, "context_length", 77)))


def list_models() -> list[str]:
    """Every model name open_clip knows, ours included."""
    return open_clip.list_models()


def load_model(
    model_name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> LoadedModel:
    """Create ``model_name`` with ``pretrained`` weights, in eval mode, with its preprocess cfg and tokenizer."""
    model_name, pretrained = _resolve_hf_hub(model_name, pretrained)
    if not model_name.startswith(HF_HUB_PREFIX):
        check_model_name(model_name)
    weights = _resolve_pretrained(model_name, pretrained)
    try:
        model = open_clip.create_model(model_name, pretrained=weights, precision=precision, device=device)
    except ModelLoadError:
        raise
    except Exception as e:  # torch.load(weights_only=True) raises UnpicklingError / struct.error for bad files too
        raise ModelLoadError(
            f"could not load weights for model {model_name!r} with pretrained={pretrained!r}: "
            f"{first_line(e)}. "
            f"Pass a local checkpoint with --pretrained /path/to/open_clip_model.safetensors."
        ) from e
    model.eval()
    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    tokenizer = open_clip.get_tokenizer(model_name)
    return LoadedModel(model, cfg, tokenizer, model_name, pretrained)


def check_model_name(model_name: str) -> None:
    """Raise ModelLoadError for an unknown name, suggesting the closest known ones."""
    known = open_clip.list_models()
    if model_name in known:
        return
    close = difflib.get_close_matches(model_name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See `clap-edge models` for the list."
    raise ModelLoadError(f"unknown model {model_name!r}.{hint}")


def tokenize_checked(tokenizer: Callable[..., torch.Tensor], texts: list[str], reserve: int = 0) -> torch.Tensor:
    """Tokenize ``texts``, refusing any that would be silently truncated.

    ``reserve`` extra positions are kept free (for the noise context of CLAP.md).
    """
    context_length = int(getattr(tokenizer, "context_length", 77))
    encode = getattr(tokenizer, "encode", None)
    if encode is not None:  # open_clip's SimpleTokenizer: sot + tokens + eot
        for text in texts:
            n = len(encode(text)) + 2
            if n + reserve > context_length:
                raise PromptError(
                    f"text {text!r} needs {n} tokens (+{reserve} reserved) but the model's text context "
                    f"holds {context_length}; shorten the class name or the prompt vocabulary."
                )
    return tokenizer(texts)


def _resolve_hf_hub(model_name: str, pretrained: str | None) -> tuple[str, str | None]:
    # open_clip addresses hub models through the model name; accept it in either argument.
    if pretrained and pretrained.startswith(HF_HUB_PREFIX):
        return pretrained, None
    return model_name, pretrained


def _resolve_pretrained(model_name: str, pretrained: str | None) -> str | None:
    """Map ``pretrained`` to what open_clip.create_model accepts, failing fast when offline."""
    if model_name.startswith(HF_HUB_PREFIX):
        _require_hub(f"model {model_name!r}", cached=False)
        return None
    if not pretrained:
        return None
    shipped = SHIPPED_WEIGHTS.get((model_name, pretrained))
    if shipped is not None:
        path = WEIGHTS_DIR / shipped
        if not path.is_file():
            raise ModelLoadError(f"shipped weights for {model_name!r}/{pretrained!r} are missing: {path}")
        return str(path)
    if os.path.sep in pretrained or Path(pretrained).suffix or Path(pretrained).exists():
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}")
        return str(path)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        known = ", ".join(tags) if tags else "none (pass a local checkpoint path)"
        raise ModelLoadError(f"unknown pretrained tag {pretrained!r} for model {model_name!r}; known tags: {known}.")
    if not _weights_in_cache(cfg):
        _require_hub(f"weights for model {model_name!r}, pretrained tag {pretrained!r}", cached=False)
    return pretrained


def _weights_in_cache(cfg: dict[str, Any]) -> bool:
    hub_id = cfg.get("hf_hub", "")
    if not hub_id:
        return False
    from huggingface_hub import try_to_load_from_cache

    repo = hub_id.rstrip("/").split("/")
    repo_id = "/".join(repo[:2])
    names = [repo[2]] if len(repo) > 2 and repo[2] else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in names)


def _require_hub(what: str, cached: bool) -> None:
    """Fail at once, with a useful message, when the model hub cannot be reached."""
    hint = (
        "Download the checkpoint on a connected machine and pass its path, e.g. "
        "--pretrained /path/to/open_clip_model.safetensors (or use the shipped model: "
        "--model clap-edge-toy --pretrained toyworld)."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelLoadError(f"{what} are not in the local cache and HF_HUB_OFFLINE is set. {hint}")
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        raise ModelLoadError(f"{what} are not on disk and the model hub ({host}) is unreachable ({e}). {hint}") from e


def text_projection_dim(model: torch.nn.Module) -> int | None:
    """Output width of an open_clip text tower's projection (a matrix or a Linear); None without one."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return int(projection.out_features)
    if isinstance(projection, torch.Tensor) and projection.dim() == 2:
        return int(projection.shape[1])
    return None


def _probe_embed_dim(loaded: LoadedModel) -> int:
    with torch.no_grad():
        return int(loaded.model.encode_text(loaded.tokenizer(["a"])).shape[-1])
