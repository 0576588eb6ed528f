"""open_clip's text tower with CLAP's noise context, and the two exact savings that make pre-encoding cheap.

Noise context (CLAP.md): ``n_ctx`` vectors drawn from N(0, std^2) are inserted into the
token-embedding sequence before the positional embedding and the transformer: all right
after SOT ("front"), all right before EOT ("end"), or, as the authors' ``middle`` does,
the first ``n_ctx // 2`` right after SOT and the rest right before EOT, around the words. This mirrors open_clip 3.3's
``CLIP.encode_text`` step by step; with ``n_ctx=0`` it computes exactly ``encode_text``.

Exact saving: the text tower is causal and pools at the end-of-text token, so tokens after
EOT never reach the output. A batch is therefore cut to its longest real sequence
(+ ``n_ctx``) instead of the full context length (77 for most models).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from clap_edge.core.errors import ModelLoadError
from clap_edge.models import text_projection_dim

NOISE_POSITIONS = ("front", "middle", "end")
TOWER_ATTRIBUTES = ("token_embedding", "positional_embedding", "transformer", "attn_mask", "ln_final",
                    "text_projection", "text_pool_type")


@dataclass(frozen=True)
class NoiseConfig:
    """The noise context of CLAP.md: ``n_ctx`` N(0, std^2) token embeddings at a random position."""

    n_ctx: int = 4
    std: float = 0.02
    positions: tuple[str, ...] = NOISE_POSITIONS

    def __post_init__(self) -> None:
        if self.n_ctx < 0 or self.std < 0:
            raise ValueError(f"noise n_ctx and std must be >= 0 (got {self.n_ctx}, {self.std})")
        unknown = set(self.positions) - set(NOISE_POSITIONS)
        if unknown or not self.positions:
            raise ValueError(f"noise positions must be a non-empty subset of {NOISE_POSITIONS}, got {self.positions}")


class NoiseTextEncoder:
    """Encodes token ids through a frozen open_clip CLIP text tower, optionally with noise context."""

    def __init__(self, model: nn.Module):
        missing = [a for a in TOWER_ATTRIBUTES if not hasattr(model, a)]
        if missing:
            raise ModelLoadError(
                f"{type(model).__name__} has no plain CLIP text tower (missing {', '.join(missing)}); noise context "
                f"and pre-encoding need open_clip's CLIP text tower (HF text towers / CustomTextCLIP are not "
                f"supported)."
            )
        if model.text_pool_type not in ("argmax", "eos"):
            raise ModelLoadError(
                f"text pool type {model.text_pool_type!r} is not supported: noise context needs end-of-text pooling "
                f"('argmax' or 'eos')."
            )
        if model.text_pool_type == "eos" and getattr(model, "text_eos_id", None) is None:
            raise ModelLoadError("text pool type 'eos' without a text_eos_id on the model")
        self.model = model
        self.context_length = int(model.positional_embedding.shape[0])
        self.width = int(model.token_embedding.weight.shape[1])
        # A causal mask is what makes cutting after EOT exact; without one, keep the full length.
        self.causal = model.attn_mask is not None

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the pooled (end-of-text) token, as open_clip's ``text_global_pool`` finds it."""
        if self.model.text_pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.model.text_eos_id).int().argmax(dim=-1)

    def insert_positions(self, tokens: torch.Tensor, where: Sequence[str]) -> torch.Tensor:
        """Insertion points [B, 2] per row: (first, second); see :func:`_insert` for how noise is split.

        front: (1, 1), all noise after SOT; end: (eot, eot), all before EOT; middle: (1, eot),
        n_ctx // 2 after SOT and the rest before EOT (the authors' ``clip_encode_noised_text``).
        """
        eot = self.eot_index(tokens)
        one = torch.ones_like(eot)
        table = {"front": (one, one), "middle": (one, eot), "end": (eot, eot)}
        return torch.stack([torch.stack([table[w][0][i], table[w][1][i]]) for i, w in enumerate(where)])

    @torch.no_grad()
    def encode(self, tokens: torch.Tensor, noise: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, cut: bool = True) -> torch.Tensor:
        """Unnormalised text features [B, d]; ``noise`` [B, n_ctx, width] is inserted at ``positions``
        ([B]: one block at that index; [B, 2]: split as :meth:`insert_positions` describes)."""
        model = self.model
        device = model.positional_embedding.device
        tokens = tokens.to(device)
        cast_dtype = model.transformer.get_cast_dtype()
        n_ctx = 0 if noise is None else int(noise.shape[1])
        eot = self.eot_index(tokens)
        needed = int(eot.max()) + 1
        if needed + n_ctx > self.context_length:
            raise ValueError(f"{needed} tokens + {n_ctx} noise tokens exceed the context of {self.context_length}")
        # Cut: nothing after EOT reaches the pooled output. Uncut: keep the context length (noise pushes pads out).
        length = needed if cut and self.causal else tokens.shape[1] - n_ctx
        x = model.token_embedding(tokens[:, :length]).to(cast_dtype)
        if n_ctx:
            x = _insert(x, noise.to(device=device, dtype=cast_dtype), positions.to(device))
            eot = eot + n_ctx  # every insertion point is at or before EOT
        seq = x.shape[1]
        x = x + model.positional_embedding[:seq].to(cast_dtype)
        mask = model.attn_mask[:seq, :seq] if model.attn_mask is not None else None
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=device), eot]
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return x

    def encode_batched(self, tokens: torch.Tensor, batch_size: int = 256, noise: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None, progress: Callable[[int], None] | None = None
                       ) -> torch.Tensor:
        """Encode many rows in large batches, sorted by length so each batch is cut short (CPU result)."""
        order = torch.argsort(self.eot_index(tokens), stable=True)
        out = torch.empty(tokens.shape[0], text_projection_dim(self.model) or self.width, dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self.encode(
                tokens[idx], None if noise is None else noise[idx], None if positions is None else positions[idx]
            ).float().cpu()
            if progress is not None:
                progress(len(idx))
        return out


def draw_noise(keys: Sequence[str], config: NoiseConfig, width: int, seed: int,
               draw_keys: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Noise [len(keys), n_ctx, width] and a position per key, each a pure function of (seed, draw key).

    The draw key of row i is ``draw_keys[i]`` (default: ``keys[i]``). Seeding per text key
    (ours) makes a cached noisy view independent of which run, batch or schedule first asked
    for it; rows that share a draw key share one noise draw and one position (the authors'
    per-call sharing: the trainer passes one draw key for every view of a batch).
    """
    draw_keys = keys if draw_keys is None else draw_keys
    noise = torch.empty(len(keys), config.n_ctx, width)
    where = []
    for i, key in enumerate(draw_keys):
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        noise[i] = torch.randn(config.n_ctx, width, generator=gen) * config.std
        where.append(config.positions[digest[8] % len(config.positions)])
    return noise, where


def _insert(x: torch.Tensor, noise: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Insert ``noise`` into each row of ``x`` (a gather, no Python loop).

    ``positions`` [B] puts row b's whole noise block at index p: x[:p] + noise + x[p:].
    ``positions`` [B, 2] = (p1, p2): with p1 == p2 the same; with p1 < p2 the first
    n_ctx // 2 noise vectors go at p1 and the rest at p2 (indices of the original row):
    x[:p1] + noise[:k] + x[p1:p2] + noise[k:] + x[p2:].
    """
    batch, length, width = x.shape
    n_ctx = noise.shape[1]
    pos = positions.view(batch, -1)
    p1, p2 = pos[:, :1], pos[:, -1:]
    k = torch.where(p1 == p2, n_ctx, n_ctx // 2)  # noise vectors placed at p1
    j = torch.arange(length + n_ctx, device=x.device).unsqueeze(0)
    noise_at = length  # noise vector i sits at index length + i of ``src``
    index = torch.where(j < p1, j,
            torch.where(j < p1 + k, noise_at + j - p1,
            torch.where(j < p2 + k, j - k,
            torch.where(j < p2 + n_ctx, noise_at + j - p2, j - n_ctx))))
    src = torch.cat([x, noise], dim=1)
    return torch.gather(src, 1, index.unsqueeze(-1).expand(batch, length + n_ctx, width))
