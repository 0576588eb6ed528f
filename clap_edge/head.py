"""The CLAP head ("disentangled network" of CLAP.md): f_s(z) = z + s * P(L(act(z))).

``L`` is Linear(d -> h, bias), ``P`` is Linear(h -> d, no bias) and zero-initialised,
so a fresh head is the identity. ``alpha`` is the residual scale ``s``: 1 while
training, small at inference. Attribute names (``linear``, ``projection``) match the
authors' released state dicts, so their checkpoints load without renaming.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clap_edge.core.errors import CheckpointError, first_line
from clap_edge.core.io import atomic_path

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "identity": nn.Identity}
OFFICIAL_NETWORKS = ("beta", "psi")  # beta: text-trained CLAP; psi: the authors' image-augmentation variant
METADATA_KEY = "clap_edge.head"


@dataclass
class HeadConfig:
    """Shape of the head plus where it came from; stored in the safetensors metadata."""

    in_dim: int
    latent_dim: int = 256
    out_dim: int | None = None
    activation: str = "silu"
    alpha: float = 1.0
    model_name: str | None = None
    pretrained: str | None = None
    class_names: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.out_dim is None:
            self.out_dim = self.in_dim
        if self.activation not in ACTIVATIONS:
            raise CheckpointError(f"unknown head activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")


class CLAPHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.activation = ACTIVATIONS[config.activation]()
        self.linear = nn.Linear(config.in_dim, config.latent_dim, bias=True)
        self.projection = nn.Linear(config.latent_dim, config.out_dim, bias=False)
        nn.init.zeros_(self.projection.weight)

    @property
    def alpha(self) -> float:
        return self.config.alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.config.alpha = float(value)

    def forward(self, z: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        scale = self.config.alpha if alpha is None else alpha
        return self._skip(z) + scale * self.projection(self.linear(self.activation(z)))

    def _skip(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.out_dim == self.config.in_dim:
            return z
        # The reference resamples the skip path with nearest-neighbour interpolation.
        return F.interpolate(z.unsqueeze(1), size=self.config.out_dim, mode="nearest").squeeze(1)

    def distance_from_identity(self) -> float:
        """Frobenius norm of P: zero for a fresh head, grows as training moves it."""
        return float(self.projection.weight.detach().norm())

    # ---- persistence -------------------------------------------------------------

    @classmethod
    def from_official_checkpoint(
        cls, path: str | os.PathLike, network: str = "beta", alpha: float = 1.0, **config: Any
    ) -> "CLAPHead":
        """Load a head from the authors' released state dict (``network_beta.*`` / ``network_psi.*``)."""
        if network not in OFFICIAL_NETWORKS:
            raise CheckpointError(f"network must be one of {OFFICIAL_NETWORKS}, got {network!r}")
        state = _torch_load_state_dict(Path(path))
        prefix = f"network_{network}."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            found = sorted({k.split(".")[0] for k in state})
            raise CheckpointError(f"{path}: no '{prefix}*' keys (found prefixes: {', '.join(found) or 'none'})")
        weight = _require(sub, "linear.weight", path, prefix)
        latent_dim, in_dim = weight.shape
        out_dim = _require(sub, "projection.weight", path, prefix).shape[0]
        head = cls(HeadConfig(in_dim=in_dim, latent_dim=latent_dim, out_dim=out_dim, alpha=alpha, **config))
        head.load_state_dict_checked(sub, source=f"{path} ({prefix}*)")
        return head

    def load_state_dict_checked(self, state: dict[str, torch.Tensor], source: str) -> None:
        """load_state_dict with errors that name the file, the key and both shapes."""
        expected = self.state_dict()
        missing = [k for k in expected if k not in state]
        if missing:
            raise CheckpointError(f"{source}: missing keys {missing}")
        unexpected = [k for k in state if k not in expected]
        if unexpected:
            raise CheckpointError(f"{source}: unexpected keys {unexpected}")
        for key, tensor in expected.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{source}: key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
                )
        self.load_state_dict({k: v.float() for k, v in state.items()})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights as safetensors, with the config (JSON) in the metadata; atomic."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(asdict(self.config))})
        return Path(path)

    def save_official(self, path: str | os.PathLike, network: str = "psi") -> Path:
        """Write the authors' checkpoint layout (a plain state dict; atomic) with this head as ``network_<network>``.

        The other sub-network is written as the identity (zero projection), so the file also loads
        into the authors' ``DisentangledNetwork`` with ``strict=True``; :meth:`from_official_checkpoint`
        reads it back. The metadata (settings) stays in the safetensors file of :meth:`save`."""
        if network not in OFFICIAL_NETWORKS:
            raise CheckpointError(f"network must be one of {OFFICIAL_NETWORKS}, got {network!r}")
        state = {}
        for name in OFFICIAL_NETWORKS:
            for key, value in self.state_dict().items():
                value = value.detach().cpu().clone()
                state[f"network_{name}.{key}"] = value if name == network else torch.zeros_like(value)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CLAPHead":
        """Load a head written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"head file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        if METADATA_KEY not in metadata:
            raise CheckpointError(f"{path}: no '{METADATA_KEY}' metadata; was it written by CLAPHead.save?")
        config = _config_from_metadata(metadata[METADATA_KEY], path)
        head = cls(config)
        head.load_state_dict_checked(state, source=str(path))
        return head


MAX_HEAD_DIM = 65_536
MAX_METADATA_BYTES = 16 << 20


def _config_from_metadata(text: str, path: Path) -> HeadConfig:
    """The head's metadata JSON, every field checked: a bad value is one line naming the file and the field."""
    import math

    from clap_edge.core.classnames import describe_duplicate, nfc_duplicate

    def bad(name: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: head metadata field {name}: {problem}")

    def no_constant(name: str):
        raise bad("(json)", f"{name} is not a finite number")

    if len(text) > MAX_METADATA_BYTES:
        raise bad("(json)", f"{len(text):,} bytes, more than {MAX_METADATA_BYTES:,}")
    try:
        data = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise bad("(json)", "nested too deeply") from None
    except json.JSONDecodeError as e:
        raise bad("(json)", f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise bad("(json)", "must be a JSON object")
    known = {f.name for f in fields(HeadConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise bad(unknown[0], f"is not a head config field ({', '.join(sorted(known))})")
    if "in_dim" not in data:
        raise bad("in_dim", "is missing")

    def dim(name: str, optional: bool = False) -> None:
        v = data.get(name)
        if optional and v is None:
            return
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_HEAD_DIM:
            raise bad(name, f"must be an integer in [1, {MAX_HEAD_DIM}], got {v!r}")

    dim("in_dim")
    dim("latent_dim", optional="latent_dim" not in data)
    dim("out_dim", optional=True)
    alpha = data.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise bad("alpha", f"must be a finite number, got {alpha!r}")
    if data.get("activation", "silu") not in ACTIVATIONS:
        raise bad("activation", f"must be one of {list(ACTIVATIONS)}, got {data.get('activation')!r}")
    for name in ("model_name", "pretrained"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise bad(name, f"must be a string or null, got {type(data[name]).__name__}")
    names = data.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(c, str) and c.strip() for c in names):
        raise bad("class_names", "must be a list of non-empty strings")
    dup = nfc_duplicate(names)
    if dup:
        raise bad("class_names", describe_duplicate(*dup))
    if not isinstance(data.get("training", {}), dict):
        raise bad("training", "must be an object")
    return HeadConfig(**data)


def _torch_load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for code-carrying pickles, RuntimeError for junk
        raise CheckpointError(
            f"{path}: refused or unreadable with torch.load(weights_only=True) "
            f"(a checkpoint must be a plain state dict of tensors): {first_line(e)}"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (got {type(state).__name__})")
    return state


def _require(sub: dict[str, torch.Tensor], key: str, path: Any, prefix: str) -> torch.Tensor:
    if key not in sub:
        raise CheckpointError(f"{path}: missing key '{prefix}{key}'")
    if sub[key].dim() != 2:
        raise CheckpointError(f"{path}: key '{prefix}{key}' has shape {tuple(sub[key].shape)}, expected 2-D")
    return sub[key]
