"""Strict, shape-checked weight loading into a HookedGemma built on the meta device."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from g2interp.config import ModelConfig
from g2interp.model.gemma import HookedGemma
from g2interp.tokenizer import GemmaTokenizer


class CheckpointError(ValueError):
    """A checkpoint is incomplete, inconsistent or of another architecture."""


def expand_name_map(template: Mapping[str, str], n_layers: int) -> dict[str, str]:
    """Instantiate ``{}``-templated per-layer names for every layer."""
    out: dict[str, str] = {}
    for src, dst in template.items():
        if "{}" in src:
            for layer in range(n_layers):
                out[src.format(layer)] = dst.format(layer)
        else:
            out[src] = dst
    return out


def fused_parameters(cfg: ModelConfig) -> dict[str, tuple[tuple[str, int], ...]]:
    """Per block, the fused parameters and their (checkpoint-level part name, rows) in order."""
    qkv = (
        ("attn.q_proj.weight", cfg.n_heads * cfg.d_head),
        ("attn.k_proj.weight", cfg.n_kv_heads * cfg.d_head),
        ("attn.v_proj.weight", cfg.n_kv_heads * cfg.d_head),
    )
    gate_up = (("mlp.gate_proj.weight", cfg.d_mlp), ("mlp.up_proj.weight", cfg.d_mlp))
    return {"attn.qkv_proj.weight": qkv, "mlp.gate_up_proj.weight": gate_up}


def logical_shapes(model: HookedGemma) -> dict[str, tuple[int, ...]]:
    """Parameter shapes as checkpoints name them: fused matrices listed as their parts."""
    fused = fused_parameters(model.cfg)
    out: dict[str, tuple[int, ...]] = {}
    for name, p in model.named_parameters():
        suffix = next((f for f in fused if name.endswith("." + f)), None)
        if suffix is None:
            out[name] = tuple(p.shape)
            continue
        prefix = name[: -len(suffix)]
        for part, rows in fused[suffix]:
            out[prefix + part] = (rows, *p.shape[1:])
    return out


def build_model(
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, Tensor]],
    *,
    source: str,
    tokenizer: GemmaTokenizer | None,
    device: torch.device,
    dtype: torch.dtype,
) -> HookedGemma:
    """Create the model on the meta device, then assign exactly the expected tensors (strict).

    ``tensors`` yields ``(our_name, tensor)``; every name must be a parameter of the model, every
    parameter must be given once, and every shape must match, else :class:`CheckpointError`.
    """
    with torch.device("meta"):
        model = HookedGemma(cfg, tokenizer)
    expected = logical_shapes(model)
    state: dict[str, Tensor] = {}
    for name, tensor in tensors:
        if name not in expected:
            raise CheckpointError(
                f"{source}: unexpected tensor {name!r} (not a parameter of a {cfg.architecture} model)"
            )
        if name in state:
            raise CheckpointError(f"{source}: tensor {name!r} given twice")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the config implies {tuple(expected[name])}"
            )
        state[name] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state), key=_natural_key)
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise CheckpointError(f"{source}: missing tensors {shown}")
    for layer in range(cfg.n_layers):
        for fused, parts in fused_parameters(cfg).items():
            prefix = f"blocks.{layer}."
            state[prefix + fused] = torch.cat([state.pop(prefix + part) for part, _ in parts])
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
