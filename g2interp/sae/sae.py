"""JumpReLU sparse autoencoder (Gemma Scope) and transcoder, stored in SAELens's folder format.

``f(x) = JumpReLU_θ(x W_enc + b_enc)``, ``x̂ = f W_dec + b_dec`` where ``JumpReLU_θ(z) = z · [z > θ]``.
A transcoder is the same map whose decoder writes another hook (an MLP's output, read from its input),
optionally with an affine skip connection: ``ŷ = f W_dec + b_dec + x W_skip^T``.
A folder written by :meth:`JumpReLUSAE.save` is read by ``sae_lens.SAE.load_from_disk`` as a
``jumprelu`` SAE (``jumprelu_transcoder`` / ``jumprelu_skip_transcoder``) with identical outputs, and
:meth:`JumpReLUSAE.load` reads SAELens-saved folders. Gemma Scope imports live in
:mod:`g2interp.sae.gemma_scope`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
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
from g2interp.constants import HOOK_MLP_IN, HOOK_MLP_OUT
from g2interp.files import atomic_write_bytes, atomic_write_text
from g2interp.sae.constants import (
    JUMPRELU_ARCHITECTURE,
    JUMPRELU_SKIP_TRANSCODER_ARCHITECTURE,
    JUMPRELU_TRANSCODER_ARCHITECTURE,
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
#: Weight name -> shape as a function of (d_in, d_sae, d_out), the names SAELens and Gemma Scope use;
#: every SAE and transcoder has these (``d_out == d_in`` for an SAE).
WEIGHT_SHAPES: dict[str, tuple[str, ...]] = {
    "W_enc": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_out"),
    "b_dec": ("d_out",),
    "threshold": ("d_sae",),
}
#: The affine skip connection of a skip transcoder (``cfg.affine_skip``), in SAELens's layout.
SKIP_WEIGHT_SHAPES: dict[str, tuple[str, ...]] = {"W_skip": ("d_out", "d_in")}
#: cfg.json ``architecture`` -> (transcoder, affine skip), for the architectures JumpReLUSAE reads.
_ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    JUMPRELU_ARCHITECTURE: (False, False),
    JUMPRELU_TRANSCODER_ARCHITECTURE: (True, False),
    JUMPRELU_SKIP_TRANSCODER_ARCHITECTURE: (True, True),
}
_MLP_IN_HOOK = re.compile(r"^blocks\.(\d+)\.hook_mlp_in$")
#: cfg.json keys that describe the SAE itself; every other key is kept as metadata on load.
_SAELENS_MODEL_KEYS = (
    "architecture",
    "d_in",
    "d_sae",
    "d_out",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
)


class SAEFormatError(ValueError):
    """An SAE file is of another architecture, lacks a tensor, or holds a misshapen one."""


def transcoder_hook_out(hook_name: str) -> str:
    """The hook a transcoder reading ``hook_name`` writes: ``blocks.L.hook_mlp_out`` for
    ``blocks.L.hook_mlp_in``; a ValueError naming the valid form for any other hook."""
    match = _MLP_IN_HOOK.match(hook_name)
    if match is None:
        raise ValueError(
            f"a transcoder reads an MLP's input, {HOOK_MLP_IN.format(layer='L')} (e.g. "
            f"{HOOK_MLP_IN.format(layer=6)}), and writes {HOOK_MLP_OUT.format(layer='L')} of the same "
            f"layer; got hook_name={hook_name!r}"
        )
    return HOOK_MLP_OUT.format(layer=int(match.group(1)))


def check_transcoder_hooks(hook_name: str, hook_name_out: str) -> None:
    """ValueError unless ``hook_name`` is ``blocks.L.hook_mlp_in`` and ``hook_name_out`` is
    ``blocks.L.hook_mlp_out`` of the same L (the transcoders Gemma Scope 2 and SAELens ship)."""
    expected = transcoder_hook_out(hook_name)
    if hook_name_out != expected:
        raise ValueError(
            f"a transcoder reading {hook_name!r} writes the same layer's MLP output {expected!r}; "
            f"got hook_name_out={hook_name_out!r}"
        )


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
    d_out: int = 0
    """Width of the output; 0 means ``d_in``, i.e. an SAE; a transcoder's is its output hook's width."""
    hook_name_out: str = ""
    """Hook a transcoder writes, e.g. ``blocks.6.hook_mlp_out``; empty for an SAE."""
    affine_skip: bool = False
    """A transcoder with an affine skip connection ``W_skip`` [d_out, d_in]: the output gains
    ``x W_skip^T``, as SAELens's skip transcoders."""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Extra JSON-serialisable facts written to ``metadata`` in cfg.json (training settings, L0, ...)."""

    def __post_init__(self) -> None:
        require_ints(self, "d_in", "d_sae")
        require_ints(self, "d_out", minimum=0)
        if self.d_out == 0:
            object.__setattr__(self, "d_out", self.d_in)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not all(isinstance(s, str) for s in (self.hook_name, self.model_name, self.hook_name_out)):
            raise TypeError("hook_name, hook_name_out and model_name must be strings")
        if not self.hook_name_out and (self.affine_skip or self.d_out != self.d_in):
            raise ValueError(
                f"affine_skip={self.affine_skip} with d_out={self.d_out}, d_in={self.d_in} describes a "
                "transcoder: set hook_name_out to the hook it writes (e.g. blocks.6.hook_mlp_out); an SAE "
                "has d_out == d_in and no skip connection"
            )
        if self.hook_name_out:
            if self.apply_b_dec_to_input:
                raise ValueError(
                    "a transcoder's b_dec is its output's bias: apply_b_dec_to_input must be False"
                )
            if self.reshape_hook_z:
                raise ValueError(
                    "a transcoder reads an MLP's input, not attn.hook_z: reshape_hook_z must be False"
                )
            if self.hook_name:
                check_transcoder_hooks(self.hook_name, self.hook_name_out)
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

    @property
    def is_transcoder(self) -> bool:
        """Whether the decoder writes another hook (``hook_name_out``) than the one read."""
        return bool(self.hook_name_out)

    @property
    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Weight name -> shape: :data:`WEIGHT_SHAPES`, and ``W_skip`` with ``affine_skip``."""
        dims = {"d_in": self.d_in, "d_sae": self.d_sae, "d_out": self.d_out}
        names = {**WEIGHT_SHAPES, **(SKIP_WEIGHT_SHAPES if self.affine_skip else {})}
        return {name: tuple(dims[d] for d in dim_names) for name, dim_names in names.items()}


class JumpReLUSAE(nn.Module):
    """Inference JumpReLU SAE or transcoder; parameters named and shaped as in SAELens and Gemma Scope."""

    W_skip: nn.Parameter | None

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        dtype = cfg.torch_dtype
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype, device=device))  # [D, F]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype, device=device))  # [F]
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_out, dtype=dtype, device=device))  # [F, O]
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype, device=device))  # [O]
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype, device=device))  # [F]
        skip_OD = torch.zeros(cfg.d_out, cfg.d_in, dtype=dtype, device=device) if cfg.affine_skip else None
        self.register_parameter("W_skip", None if skip_OD is None else nn.Parameter(skip_OD))  # [O, D]

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

    def decode(self, f: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_out"]:
        """Decoder output ``(f W_dec + b_dec) / s`` [..., d_out]: an SAE's reconstruction (``forward``
        restores a hook_z input's shape); a skip transcoder's output adds :meth:`skip` of its input."""
        f_BF = f.to(self.W_dec.dtype)
        return self._unscale(f_BF @ self.W_dec + self.b_dec)

    def decode_latents(
        self, f: Float[Tensor, "*batch n"], latents: Int[Tensor, " n"]
    ) -> Float[Tensor, "*batch d_out"]:
        """The share ``f W_dec[latents] / s`` of the given latents in the output (no ``b_dec``)."""
        f_BN = f.to(self.W_dec.dtype)
        return self._unscale(f_BN @ self.W_dec[latents])

    def _unscale(self, out_BO: Tensor) -> Tensor:
        # Inputs were multiplied by input_scale before encoding; outputs are divided by it.
        return out_BO / self.cfg.input_scale if self.cfg.input_scale != 1.0 else out_BO

    def skip(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """A skip transcoder's affine skip term ``x W_skip^T`` [..., d_out].

        It reads the raw ``x``: ``(x·s) W_skip^T / s = x W_skip^T``, so ``input_scale`` cancels out of
        it and folding leaves ``W_skip`` unchanged.
        """
        if self.W_skip is None:
            raise ValueError("this SAE has no skip connection (cfg.affine_skip is False)")
        x_BD = self._flatten_in(x).to(self.W_skip.dtype)
        return x_BD @ self.W_skip.T  # SAELens's expression, so its outputs match bit for bit

    def output(
        self, f: Float[Tensor, "*batch d_sae"], x: Float[Tensor, "*batch d_in"]
    ) -> Float[Tensor, "*batch d_out"]:
        """What latents ``f`` of input ``x`` write: the decoder's output, plus a skip transcoder's
        ``x W_skip^T`` (``x`` is read only then)."""
        out = self.decode(f)
        return out if self.W_skip is None else out + self.skip(x)

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """An SAE's reconstruction of ``x`` (same shape as ``x``); a transcoder's output [..., d_out]."""
        out = self.output(self.encode(x), x)
        return out.reshape(x.shape) if self.cfg.reshape_hook_z else out

    # ------------------------------------------------------------------ scaling
    def folded_weights(self) -> dict[str, Tensor]:
        """Weights with ``input_scale`` folded in, so that they read raw activations (SAELens's fold)."""
        s = self.cfg.input_scale
        out = {name: getattr(self, name).detach() for name in self.cfg.weight_shapes}
        if s != 1.0:
            # x·s - b_dec = s·(x - b_dec/s), and (f W_dec + b_dec)/s = f (W_dec/s) + b_dec/s;
            # W_skip reads raw x already (see skip), so it stays.
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
        """The cfg.json SAELens >= 6 reads for a JumpReLU SAE or transcoder (``d_out`` and
        ``metadata.hook_name_out`` written for transcoders only)."""
        cfg = self.cfg
        metadata = {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            **cfg.metadata,
            "model_name": cfg.model_name or None,
            "hook_name": cfg.hook_name or None,
        }
        architecture, out = JUMPRELU_ARCHITECTURE, {}
        if cfg.is_transcoder:
            metadata["hook_name_out"] = cfg.hook_name_out
            out = {"d_out": cfg.d_out}
            skip = cfg.affine_skip
            architecture = JUMPRELU_SKIP_TRANSCODER_ARCHITECTURE if skip else JUMPRELU_TRANSCODER_ARCHITECTURE
        return {
            "architecture": architecture,
            "d_in": cfg.d_in,
            "d_sae": cfg.d_sae,
            **out,
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
        what = "transcoder" if self.cfg.is_transcoder else "SAE"
        logger.info(
            "saved JumpReLU %s (d_in=%d, d_sae=%d) to %s", what, self.cfg.d_in, self.cfg.d_sae, folder
        )
        return folder

    @classmethod
    def load(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: str | None = None
    ) -> JumpReLUSAE:
        """Read a folder written by :meth:`save` or by SAELens (``save_model`` / ``save_inference_model``):
        architecture ``jumprelu``, ``jumprelu_transcoder`` or ``jumprelu_skip_transcoder``."""
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
        if arch not in _ARCHITECTURES:
            raise SAEFormatError(
                f"{cfg_path} describes a {arch!r} SAE; JumpReLUSAE reads the architectures {list(_ARCHITECTURES)}"
            )
        transcoder, affine_skip = _ARCHITECTURES[arch]
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
        hook_name = metadata.pop("hook_name", None) or ""
        hook_name_out = ""
        if transcoder:  # SAELens itself keeps no hook_name_out: then it is the MLP input's output
            hook_name_out = metadata.pop("hook_name_out", None) or raw.get("hook_name_out") or ""
            if not hook_name_out and not _MLP_IN_HOOK.match(hook_name):
                raise SAEFormatError(
                    f"{cfg_path} describes a transcoder reading {hook_name!r} but names no hook it writes: "
                    "set metadata.hook_name_out (e.g. blocks.6.hook_mlp_out)"
                )
            hook_name_out = hook_name_out or transcoder_hook_out(hook_name)
        extra = {
            k: v
            for k, v in raw.items()
            if k not in _SAELENS_MODEL_KEYS and k not in ("model_name", "hook_name", "hook_name_out")
        }
        try:
            cfg = SAEConfig(
                d_in=raw["d_in"],
                d_sae=raw["d_sae"],
                d_out=raw["d_out"] if transcoder else raw.get("d_out", 0),
                hook_name=hook_name,
                hook_name_out=hook_name_out,
                affine_skip=affine_skip,
                model_name=metadata.pop("model_name", None) or "",
                dtype=_dtype_name(dtype or raw.get("dtype", "float32")),
                apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", not transcoder)),
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
        """Build from a name -> tensor map; every weight of ``cfg.weight_shapes`` must be present (``W_skip``
        exactly when ``cfg.affine_skip``) and shaped right."""
        shapes = cfg.weight_shapes
        missing = [name for name in shapes if name not in tensors]
        if missing:
            raise SAEFormatError(f"{source} lacks {missing} (has {sorted(tensors)})")
        unexpected = sorted(set(tensors) - set(shapes))
        if unexpected:
            hint = " (W_skip belongs to a transcoder with cfg.affine_skip)" if "W_skip" in unexpected else ""
            raise SAEFormatError(f"{source} holds unexpected tensors {unexpected}{hint}")
        sizes = f"d_in={cfg.d_in}, d_sae={cfg.d_sae}" + (f", d_out={cfg.d_out}" if cfg.is_transcoder else "")
        sae = cls(cfg, device=device)
        with torch.no_grad():
            for name, expected in shapes.items():
                tensor = tensors[name]
                if tuple(tensor.shape) != expected:
                    dim_names = {**WEIGHT_SHAPES, **SKIP_WEIGHT_SHAPES}[name]
                    if not cfg.is_transcoder:  # an SAE's output is its input
                        dim_names = tuple("d_in" if d == "d_out" else d for d in dim_names)
                    raise SAEFormatError(
                        f"{source}: {name} has shape {tuple(tensor.shape)}, expected {expected} "
                        f"({', '.join(dim_names)}) for {sizes}"
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
        hook_name: str | None = None,
        model_name: str = "",
        device: torch.device | str = "cpu",
        dtype: str = "float32",
    ) -> JumpReLUSAE:
        """Import a Gemma Scope SAE or transcoder (``params.npz``, or a Gemma Scope 2 folder with
        ``params.safetensors``); see :func:`g2interp.sae.gemma_scope.load_gemma_scope`."""
        from g2interp.sae.gemma_scope import load_gemma_scope

        return load_gemma_scope(path, hook_name=hook_name, model_name=model_name, device=device, dtype=dtype)


def _dtype_name(dtype: str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise SAEFormatError(f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return name
