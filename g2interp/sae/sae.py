"""JumpReLU sparse autoencoder (Gemma Scope), stored in SAELens's folder format.

``f(x) = JumpReLU_θ(x W_enc + b_enc)``, ``x̂ = f W_dec + b_dec`` where ``JumpReLU_θ(z) = z · [z > θ]``.
A folder written by :meth:`JumpReLUSAE.save` is read by ``sae_lens.SAE.load_from_disk`` as a
``jumprelu`` SAE with identical outputs, and :meth:`JumpReLUSAE.load` reads SAELens-saved folders.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from g2interp.cli_config import require_ints
from g2interp.files import atomic_write_bytes, atomic_write_text
from g2interp.sae.constants import (
    GEMMA_SCOPE_PARAMS_FILE,
    JUMPRELU_ARCHITECTURE,
    SAE_CFG_FILE,
    SAE_WEIGHTS_FILE,
    SAELENS_FORMAT_VERSION,
)

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: Weight name -> shape as a function of (d_in, d_sae); the names SAELens and Gemma Scope both use.
WEIGHT_SHAPES: dict[str, tuple[str, ...]] = {
    "W_enc": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_in"),
    "b_dec": ("d_in",),
    "threshold": ("d_sae",),
}
#: cfg.json keys that describe the SAE itself; every other key is kept as metadata on load.
_SAELENS_MODEL_KEYS = (
    "architecture",
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
)


class SAEFormatError(ValueError):
    """An SAE file is of another architecture, lacks a tensor, or holds a misshapen one."""


@dataclass(frozen=True)
class SAEConfig:
    """What a JumpReLU SAE reads, where it reads it, and how its weights are stored."""

    d_in: int
    """Width of the activations the SAE reads (``d_model`` for residual SAEs, ``n_heads*d_head`` for hook_z)."""
    d_sae: int
    """Number of latents."""
    hook_name: str = ""
    """TransformerLens hook name whose activations the SAE reads, e.g. ``blocks.12.hook_resid_post``."""
    model_name: str = ""
    """Name of the model the SAE was trained on (informational; written to ``metadata.model_name``)."""
    dtype: str = "float32"
    """Storage and compute dtype of the weights, one of ``float32``, ``float64``, ``float16``, ``bfloat16``."""
    apply_b_dec_to_input: bool = False
    """Subtract ``b_dec`` from the input before encoding (SAELens's default); Gemma Scope does not."""
    input_scale: float = 1.0
    """Inputs are multiplied by this before encoding and outputs divided by it after decoding; it is
    folded into the weights on save, so saved SAEs always read raw activations."""
    reshape_hook_z: bool = False
    """Inputs arrive as ``[..., n_heads, d_head]`` and are flattened (outputs unflattened), as SAELens's
    ``reshape_activations="hook_z"``."""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Extra JSON-serialisable facts written to ``metadata`` in cfg.json (training settings, L0, ...)."""

    def __post_init__(self) -> None:
        require_ints(self, "d_in", "d_sae")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.hook_name, str) or not isinstance(self.model_name, str):
            raise TypeError("hook_name and model_name must be strings")
        if not np.isfinite(self.input_scale) or self.input_scale <= 0:
            raise ValueError(f"input_scale must be a positive finite number, got {self.input_scale!r}")
        try:
            json.dumps(dict(self.metadata))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


class JumpReLUSAE(nn.Module):
    """Inference JumpReLU SAE; parameters named and shaped as in SAELens and Gemma Scope."""

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        dtype = cfg.torch_dtype
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype, device=device))  # [D, F]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype, device=device))  # [F]
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dtype, device=device))  # [F, D]
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype, device=device))  # [D]
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype, device=device))  # [F]

    # ------------------------------------------------------------------ forward
    def _flatten_in(self, x: Tensor) -> Tensor:
        if self.cfg.reshape_hook_z and x.shape[-1] != self.cfg.d_in:  # [..., n_heads, d_head]
            x = x.flatten(-2)
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE reads d_in={self.cfg.d_in} features, got input of shape {tuple(x.shape)}")
        return x

    def pre_activations(
        self, x: Float[Tensor, "*batch d_in"], latents: Int[Tensor, " n"] | None = None
    ) -> Float[Tensor, "*batch d_sae_or_n"]:
        """Encoder pre-activations ``(x·s - b_dec·[apply_b_dec_to_input]) W_enc + b_enc`` (s = input_scale).

        ``latents`` (indices into ``d_sae``) computes only those columns, last dim ``n``.
        """
        x_BD = self._flatten_in(x).to(self.W_enc.dtype)
        if self.cfg.input_scale != 1.0:
            x_BD = x_BD * self.cfg.input_scale
        if self.cfg.apply_b_dec_to_input:
            x_BD = x_BD - self.b_dec
        if latents is None:
            return x_BD @ self.W_enc + self.b_enc  # SAELens's expression, so its outputs match bit for bit
        return x_BD @ self.W_enc[:, latents] + self.b_enc[latents]

    def activation(
        self, pre: Float[Tensor, "*batch d_sae_or_n"], latents: Int[Tensor, " n"] | None = None
    ) -> Float[Tensor, "*batch d_sae_or_n"]:
        """JumpReLU of pre-activations (of all latents, or of ``latents`` only)."""
        threshold_F = self.threshold if latents is None else self.threshold[latents]
        # ReLU then the jump, as SAELens: identical while thresholds are >= 0, and never passes a
        # negative pre-activation if a checkpoint carries a negative threshold.
        return torch.relu(pre) * (pre > threshold_F).to(pre.dtype)

    def encode(
        self, x: Float[Tensor, "*batch d_in"], latents: Int[Tensor, " n"] | None = None
    ) -> Float[Tensor, "*batch d_sae_or_n"]:
        """Latent activations: pre-activations kept where they exceed the threshold, else 0.

        ``latents`` (indices into ``d_sae``) encodes only those latents, at the cost of ``n`` columns.
        """
        return self.activation(self.pre_activations(x, latents), latents)

    def decode(self, f: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction ``(f W_dec + b_dec) / s`` [..., d_in] (``forward`` restores a hook_z input's shape)."""
        f_BF = f.to(self.W_dec.dtype)
        return self._unscale(f_BF @ self.W_dec + self.b_dec)

    def decode_latents(
        self, f: Float[Tensor, "*batch n"], latents: Int[Tensor, " n"]
    ) -> Float[Tensor, "*batch d_in"]:
        """The share ``f W_dec[latents] / s`` of the given latents in the reconstruction (no ``b_dec``)."""
        f_BN = f.to(self.W_dec.dtype)
        return self._unscale(f_BN @ self.W_dec[latents])

    def _unscale(self, out_BD: Tensor) -> Tensor:
        # Inputs were multiplied by input_scale before encoding; outputs are divided by it.
        return out_BD / self.cfg.input_scale if self.cfg.input_scale != 1.0 else out_BD

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction of ``x`` (same shape as ``x``)."""
        out = self.decode(self.encode(x))
        return out.reshape(x.shape) if self.cfg.reshape_hook_z else out

    # ------------------------------------------------------------------ scaling
    def folded_weights(self) -> dict[str, Tensor]:
        """Weights with ``input_scale`` folded in, so that they read raw activations (SAELens's fold)."""
        s = self.cfg.input_scale
        out = {name: getattr(self, name).detach() for name in WEIGHT_SHAPES}
        if s != 1.0:
            # x·s - b_dec = s·(x - b_dec/s), and (f W_dec + b_dec)/s = f (W_dec/s) + b_dec/s.
            out["W_enc"] = out["W_enc"] * s
            out["W_dec"] = out["W_dec"] / s
            out["b_dec"] = out["b_dec"] / s
        return {name: t.contiguous() for name, t in out.items()}

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Fold ``input_scale`` into the weights in place and set it to 1."""
        for name, tensor in self.folded_weights().items():
            getattr(self, name).copy_(tensor)
        self.cfg = dataclasses.replace(self.cfg, input_scale=1.0)

    # ------------------------------------------------------------------ save / load
    def saelens_cfg_dict(self) -> dict[str, Any]:
        """The cfg.json SAELens >= 6 reads for a JumpReLU SAE."""
        cfg = self.cfg
        metadata = {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            **cfg.metadata,
            "model_name": cfg.model_name or None,
            "hook_name": cfg.hook_name or None,
        }
        return {
            "architecture": JUMPRELU_ARCHITECTURE,
            "d_in": cfg.d_in,
            "d_sae": cfg.d_sae,
            "dtype": _DTYPE_NAMES[self.W_enc.dtype],  # the stored tensors' dtype, even after .to()
            "device": "cpu",
            "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "hook_z" if cfg.reshape_hook_z else "none",
            "metadata": metadata,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` (input scale folded in), each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.to("cpu") for name, t in self.folded_weights().items()}
        atomic_write_bytes(folder / SAE_WEIGHTS_FILE, safetensors_bytes(tensors))
        atomic_write_text(folder / SAE_CFG_FILE, json.dumps(self.saelens_cfg_dict(), indent=2) + "\n")
        logger.info("saved JumpReLU SAE (d_in=%d, d_sae=%d) to %s", self.cfg.d_in, self.cfg.d_sae, folder)
        return folder

    @classmethod
    def load(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: str | None = None
    ) -> JumpReLUSAE:
        """Read a folder written by :meth:`save` or by SAELens (``save_model`` / ``save_inference_model``)."""
        folder = Path(folder)
        cfg_path, weights_path = folder / SAE_CFG_FILE, folder / SAE_WEIGHTS_FILE
        for path in (cfg_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: an SAE folder holds {SAE_CFG_FILE} and {SAE_WEIGHTS_FILE}"
                )
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise SAEFormatError(f"{cfg_path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise SAEFormatError(f"{cfg_path} must hold a JSON object")
        arch = raw.get("architecture", "standard")
        if arch != JUMPRELU_ARCHITECTURE:
            raise SAEFormatError(
                f"{cfg_path} describes a {arch!r} SAE; JumpReLUSAE reads only {JUMPRELU_ARCHITECTURE!r} SAEs"
            )
        normalize = raw.get("normalize_activations", "none") or "none"
        if normalize not in ("none", "expected_average_only_in"):
            # SAELens applies "expected_average_only_in" in its trainer only (folded into saved weights);
            # other modes change the inference computation and are not implemented here.
            raise SAEFormatError(f"{cfg_path}: normalize_activations={normalize!r} is not supported")
        reshape = raw.get("reshape_activations", "none")
        if reshape not in ("none", "hook_z"):
            raise SAEFormatError(f"{cfg_path}: reshape_activations={reshape!r} is not supported")
        metadata = dict(raw.get("metadata") or {})
        for key in ("model_name", "hook_name"):  # pre-6.0 SAELens configs keep these at top level
            if metadata.get(key) is None and raw.get(key) is not None:
                metadata[key] = raw[key]
        if metadata.get("hook_name") is None and raw.get("hook_point") is not None:
            metadata["hook_name"] = raw["hook_point"]
        extra = {
            k: v
            for k, v in raw.items()
            if k not in _SAELENS_MODEL_KEYS and k not in ("model_name", "hook_name")
        }
        try:
            cfg = SAEConfig(
                d_in=raw["d_in"],
                d_sae=raw["d_sae"],
                hook_name=metadata.pop("hook_name", None) or "",
                model_name=metadata.pop("model_name", None) or "",
                dtype=_dtype_name(dtype or raw.get("dtype", "float32")),
                apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
                reshape_hook_z=reshape == "hook_z",
                metadata={**extra, **metadata},
            )
        except KeyError as exc:
            raise SAEFormatError(f"{cfg_path} lacks required key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise SAEFormatError(f"{cfg_path}: {exc}") from exc
        try:
            state = load_file(weights_path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise SAEFormatError(f"cannot read {weights_path}: {exc}") from exc
        if "threshold" not in state and "log_threshold" in state:  # SAELens training checkpoints before 6.x
            state["threshold"] = state.pop("log_threshold").exp()
        return cls.from_tensors(state, cfg, source=str(weights_path), device=device)

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, Tensor],
        cfg: SAEConfig,
        *,
        source: str = "tensors",
        device: torch.device | str = "cpu",
    ) -> JumpReLUSAE:
        """Build from a name -> tensor map; every weight must be present, shaped right and finite."""
        missing = [name for name in WEIGHT_SHAPES if name not in tensors]
        if missing:
            raise SAEFormatError(f"{source} lacks {missing} (has {sorted(tensors)})")
        unexpected = sorted(set(tensors) - set(WEIGHT_SHAPES))
        if unexpected:
            raise SAEFormatError(f"{source} holds unexpected tensors {unexpected}")
        dims = {"d_in": cfg.d_in, "d_sae": cfg.d_sae}
        sae = cls(cfg, device=device)
        with torch.no_grad():
            for name, dim_names in WEIGHT_SHAPES.items():
                tensor = tensors[name]
                expected = tuple(dims[d] for d in dim_names)
                if tuple(tensor.shape) != expected:
                    raise SAEFormatError(
                        f"{source}: {name} has shape {tuple(tensor.shape)}, expected {expected} "
                        f"({', '.join(dim_names)}) for d_in={cfg.d_in}, d_sae={cfg.d_sae}"
                    )
                if not tensor.is_floating_point():
                    raise SAEFormatError(f"{source}: {name} has dtype {tensor.dtype}, expected a float dtype")
                getattr(sae, name).copy_(tensor)
        return sae

    @classmethod
    def from_gemma_scope(
        cls,
        path: str | Path,
        *,
        hook_name: str,
        model_name: str,
        device: torch.device | str = "cpu",
        dtype: str = "float32",
    ) -> JumpReLUSAE:
        """Import a Gemma Scope ``params.npz`` (a file, or a folder holding one).

        Gemma Scope SAEs read raw activations and do not subtract ``b_dec`` from the input.
        """
        path = Path(path)
        if path.is_dir():
            path = path / GEMMA_SCOPE_PARAMS_FILE
        arrays = read_npz_params(path)
        d_in, d_sae = arrays["W_enc"].shape
        cfg = SAEConfig(
            d_in=int(d_in),
            d_sae=int(d_sae),
            hook_name=hook_name,
            model_name=model_name,
            dtype=dtype,
            apply_b_dec_to_input=False,
            metadata={"source": "gemma_scope"},
        )
        tensors = {name: torch.from_numpy(arr) for name, arr in arrays.items()}
        return cls.from_tensors(tensors, cfg, source=str(path), device=device)


def read_npz_params(path: Path) -> dict[str, np.ndarray]:
    """The five JumpReLU arrays of a Gemma Scope ``params.npz``, each float and finite (no pickles)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    out: dict[str, np.ndarray] = {}
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SAEFormatError(f"cannot read {path} as an .npz archive: {exc}") from exc
    with npz:
        keys = set(npz.files)
        missing = [name for name in WEIGHT_SHAPES if name not in keys]
        if missing:
            raise SAEFormatError(
                f"{path} lacks key(s) {missing}; Gemma Scope params hold {list(WEIGHT_SHAPES)}"
            )
        for name in sorted(keys - set(WEIGHT_SHAPES)):
            if name == "scaling_factor":
                try:
                    scale = npz[name]
                except ValueError as exc:
                    raise SAEFormatError(f"{path}: key 'scaling_factor' cannot be read: {exc}") from exc
                if scale.dtype.kind != "f" or not np.all(scale == 1):
                    raise SAEFormatError(
                        f"{path}: key 'scaling_factor' is not all ones; that is not supported"
                    )
            else:
                logger.warning("%s: ignoring unknown key %r", path, name)
        for name in WEIGHT_SHAPES:
            try:
                arr = npz[name]
            except ValueError as exc:  # object arrays need pickle, which is refused
                raise SAEFormatError(f"{path}: key {name!r} cannot be read without pickle ({exc})") from exc
            if arr.dtype.kind != "f":
                raise SAEFormatError(f"{path}: key {name!r} has dtype {arr.dtype}, expected a float array")
            if not np.isfinite(arr).all():
                raise SAEFormatError(f"{path}: key {name!r} holds NaN or inf")
            out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    if out["W_enc"].ndim != 2:  # the other shapes are checked against it by from_tensors
        raise SAEFormatError(f"{path}: key 'W_enc' has shape {out['W_enc'].shape}, expected (d_in, d_sae)")
    return out


def _dtype_name(dtype: str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise SAEFormatError(f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return name
