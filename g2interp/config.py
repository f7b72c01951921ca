"""Model configuration for Gemma 2 / Gemma 3 text decoders, read from a checkpoint's own config.

The architecture always comes from the checkpoint (``config.json`` or GGUF metadata), never from a
table of model names: TransformerLens once put Gemma 2's global layers on the wrong parity that way.
Where a key is absent, the default is the one ``transformers``' own config class applies to it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from g2interp.cli_config import require_ints


class AttentionType(str, enum.Enum):
    """Which mask a layer uses; the values are transformers' ``layer_types`` strings."""

    SLIDING = "sliding_attention"
    GLOBAL = "full_attention"


SUPPORTED_ARCHITECTURES = ("gemma2", "gemma3_text")
SUPPORTED_ROPE_TYPES = ("default", "linear")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one Gemma 2 / Gemma 3 text decoder."""

    architecture: str
    """``"gemma2"`` or ``"gemma3_text"`` (the checkpoint's ``model_type``)."""
    vocab_size: int
    """Rows of the embedding matrix."""
    d_model: int
    """Residual stream width (``hidden_size``)."""
    n_layers: int
    """Number of decoder blocks."""
    n_heads: int
    """Query heads per layer."""
    n_kv_heads: int
    """Key/value heads per layer (grouped-query attention when smaller than ``n_heads``)."""
    d_head: int
    """Width of one head (``head_dim``); not necessarily ``d_model // n_heads``."""
    d_mlp: int
    """Hidden width of the GeGLU MLP (``intermediate_size``)."""
    layer_types: tuple[AttentionType, ...]
    """Per layer: sliding-window or global attention, exactly as the checkpoint's config says."""
    sliding_window: int | None
    """Keys visible to a sliding layer, the query's own position included; None if no layer slides."""
    query_pre_attn_scalar: float
    """Attention logits are multiplied by ``query_pre_attn_scalar ** -0.5`` (not by ``d_head ** -0.5``)."""
    rope_theta_global: float
    """RoPE base of global layers."""
    rope_theta_local: float
    """RoPE base of sliding layers (Gemma 3 uses 10k locally, 1M globally; Gemma 2 one base)."""
    rope_scaling_global: float = 1.0
    """Linear RoPE position-interpolation factor on global layers (Gemma 3 4B+ use 8)."""
    rope_scaling_local: float = 1.0
    """Linear RoPE position-interpolation factor on sliding layers."""
    attn_logit_softcap: float | None = None
    """Attention logits become ``cap * tanh(logits / cap)`` (Gemma 2: 50); None disables."""
    final_logit_softcap: float | None = None
    """Output logits become ``cap * tanh(logits / cap)`` (Gemma 2: 30); None disables."""
    use_qk_norm: bool = False
    """RMSNorm on each query and key head before RoPE (Gemma 3)."""
    rms_norm_eps: float = 1e-6
    """Epsilon inside every RMSNorm."""
    max_position_embeddings: int = 8192
    """Longest sequence the checkpoint supports."""
    tie_word_embeddings: bool = True
    """Unembedding shares the embedding matrix."""
    hidden_activation: str = "gelu_pytorch_tanh"
    """MLP gate activation; Gemma uses GELU with the tanh approximation."""
    bos_token_id: int = 2
    """Beginning-of-sequence token id."""
    eos_token_ids: tuple[int, ...] = (1,)
    """Token ids that end generation."""
    pad_token_id: int = 0
    """Padding token id."""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Checkpoint config keys kept for reference (not used by the model)."""

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; g2interp runs {SUPPORTED_ARCHITECTURES}"
            )
        require_ints(self, "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp")
        require_ints(self, "max_position_embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if len(self.layer_types) != self.n_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        object.__setattr__(self, "layer_types", tuple(AttentionType(t) for t in self.layer_types))
        if AttentionType.SLIDING in self.layer_types and (self.sliding_window or 0) <= 0:
            raise ValueError("sliding layers need a positive sliding_window")
        if self.query_pre_attn_scalar <= 0:
            raise ValueError(f"query_pre_attn_scalar must be positive, got {self.query_pre_attn_scalar}")
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ValueError(
                f"unsupported hidden_activation {self.hidden_activation!r}; Gemma uses gelu_pytorch_tanh"
            )
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))

    @property
    def n_params(self) -> int:
        """Parameter count (the tied unembedding counted once)."""
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        norms = 4 * self.d_model + (2 * self.d_head if self.use_qk_norm else 0)
        block = attn + 3 * self.d_model * self.d_mlp + norms
        unembed = 0 if self.tie_word_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + self.n_layers * block + self.d_model + unembed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the config."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["layer_types"] = [t.value for t in self.layer_types]
        out["eos_token_ids"] = list(self.eos_token_ids)
        return out

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Build from a Hugging Face ``config.json`` dict (``gemma2``, ``gemma3_text`` or ``gemma3``)."""
        model_type = cfg.get("model_type")
        if model_type == "gemma3":  # multimodal wrapper: the language model's config is nested
            if "text_config" not in cfg:
                raise ValueError("gemma3 config has no text_config")
            cfg = dict(cfg["text_config"], model_type="gemma3_text")
            model_type = "gemma3_text"
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"config.json has model_type {model_type!r}; g2interp loads gemma2, gemma3_text and gemma3"
            )
        is_g3 = model_type == "gemma3_text"
        if cfg.get("use_bidirectional_attention"):
            raise ValueError(
                "config.json sets use_bidirectional_attention (an encoder); g2interp runs causal LMs"
            )
        if cfg.get("attention_bias"):
            raise ValueError(
                "config.json sets attention_bias=True; Gemma checkpoints have no attention biases"
            )
        # Defaults below are those of transformers' Gemma2Config / Gemma3TextConfig for absent keys.
        required = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ValueError(f"config.json lacks required keys {missing}")
        n_layers = int(cfg["num_hidden_layers"])
        layer_types = cfg.get("layer_types")
        if layer_types is None:
            # transformers' rule when config.json predates `layer_types`: Gemma 2 alternates starting
            # with a sliding layer 0; Gemma 3 makes every `sliding_window_pattern`-th layer global.
            pattern = int(
                cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6 if is_g3 else 2))
            )
            layer_types = [
                AttentionType.SLIDING if (i + 1) % pattern else AttentionType.GLOBAL for i in range(n_layers)
            ]
        theta_global, scale_global, theta_local, scale_local = _hf_rope(cfg, is_g3)
        eos = cfg.get("eos_token_id", 1)
        n_heads = int(cfg["num_attention_heads"])
        return cls(
            architecture=model_type,
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["hidden_size"]),
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads", n_heads)),
            d_head=int(cfg.get("head_dim", 256)),
            d_mlp=int(cfg["intermediate_size"]),
            layer_types=tuple(layer_types),
            sliding_window=cfg.get("sliding_window", 4096),
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
            rope_theta_global=theta_global,
            rope_theta_local=theta_local,
            rope_scaling_global=scale_global,
            rope_scaling_local=scale_local,
            attn_logit_softcap=cfg.get("attn_logit_softcapping", None if is_g3 else 50.0),
            final_logit_softcap=cfg.get("final_logit_softcapping", None if is_g3 else 30.0),
            use_qk_norm=is_g3,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 131072 if is_g3 else 8192)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            hidden_activation=cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh",
            bos_token_id=int(cfg.get("bos_token_id", 2)),
            eos_token_ids=tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),),
            pad_token_id=int(cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else 0),
            extra=dict(cfg),
        )


def _rope_params(params: Mapping[str, Any] | None, where: str) -> tuple[float | None, float]:
    """(theta, linear factor) from one transformers ``rope_parameters``/``rope_scaling`` dict."""
    if not params:
        return None, 1.0
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope_type {rope_type!r} for {where}; supported: {SUPPORTED_ROPE_TYPES}"
        )
    factor = float(params.get("factor", 1.0)) if rope_type == "linear" else 1.0
    theta = params.get("rope_theta")
    return (float(theta) if theta is not None else None), factor


def _hf_rope(cfg: Mapping[str, Any], is_g3: bool) -> tuple[float, float, float, float]:
    """RoPE bases and linear factors for global and local layers, from old or new config styles."""
    params = cfg.get("rope_parameters")
    if params and "full_attention" in params:  # transformers >= 5: one dict per layer type
        theta_g, scale_g = _rope_params(params["full_attention"], "full_attention")
        theta_l, scale_l = _rope_params(
            params.get("sliding_attention", params["full_attention"]), "sliding_attention"
        )
        theta_g = theta_g if theta_g is not None else float(cfg.get("rope_theta", 1e6 if is_g3 else 1e4))
        theta_l = theta_l if theta_l is not None else float(cfg.get("rope_local_base_freq", 1e4))
        return theta_g, scale_g, theta_l, scale_l
    # transformers 4.x: `rope_theta` (+ `rope_scaling` on global layers), `rope_local_base_freq` (Gemma 3).
    theta_p, scale_g = _rope_params(params or cfg.get("rope_scaling"), "rope_scaling")
    theta_g = float(cfg.get("rope_theta", theta_p if theta_p is not None else (1e6 if is_g3 else 1e4)))
    if is_g3:
        return theta_g, scale_g, float(cfg.get("rope_local_base_freq", 1e4)), 1.0
    return theta_g, scale_g, theta_g, scale_g
