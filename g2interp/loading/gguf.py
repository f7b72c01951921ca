"""GGUF files of Gemma 2 / Gemma 3 text models, dequantised to the model dtype with the ``gguf`` package."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from g2interp.config import AttentionType, ModelConfig
from g2interp.files import cache_dir
from g2interp.loading.gguf_reader import ArrayInfo, GGUFFile, GGUFFormatError
from g2interp.loading.tokenizer import tokenizer_from_gguf
from g2interp.loading.weights import CheckpointError, build_model, expand_name_map
from g2interp.model.gemma import HookedGemma

logger = logging.getLogger(__name__)

# llama.cpp tensor names -> ours.
GGUF_NAME_MAP = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "ln_final.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "blocks.{}.ln1.weight",
    "blk.{}.attn_q.weight": "blocks.{}.attn.q_proj.weight",
    "blk.{}.attn_k.weight": "blocks.{}.attn.k_proj.weight",
    "blk.{}.attn_v.weight": "blocks.{}.attn.v_proj.weight",
    "blk.{}.attn_output.weight": "blocks.{}.attn.o_proj.weight",
    "blk.{}.attn_q_norm.weight": "blocks.{}.attn.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "blocks.{}.attn.k_norm.weight",
    "blk.{}.post_attention_norm.weight": "blocks.{}.ln1_post.weight",
    "blk.{}.ffn_norm.weight": "blocks.{}.ln2.weight",
    "blk.{}.post_ffw_norm.weight": "blocks.{}.ln2_post.weight",
    "blk.{}.ffn_gate.weight": "blocks.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "blocks.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "blocks.{}.mlp.down_proj.weight",
}
_ARCHITECTURES = {"gemma2": "gemma2", "gemma3": "gemma3_text"}
# Keys the GGUF format leaves out for these architectures; llama.cpp and transformers both assume these.
_SLIDING_PATTERN_DEFAULT = {"gemma2": 2, "gemma3": 6}
_LOCAL_ROPE_BASE_DEFAULT = 10_000.0


def _open(path: Path) -> GGUFFile:
    try:
        return GGUFFile(path)
    except GGUFFormatError as exc:
        raise CheckpointError(str(exc)) from exc


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    value = reader.get(key, default)
    return value.length if isinstance(value, ArrayInfo) else value


def config_from_gguf(reader, path: Path, overrides: dict | None = None) -> ModelConfig:
    """Architecture from GGUF metadata (plus the format's documented defaults for absent keys)."""
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not a Gemma 2 / Gemma 3 text model")

    def opt(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    def req(key: str):
        value = opt(key)
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    n_layers = int(req("block_count"))
    if "token_embd.weight" not in reader.tensors:
        raise CheckpointError(f"{path}: missing tensor 'token_embd.weight'")
    pattern = opt("attention.sliding_window_pattern", _SLIDING_PATTERN_DEFAULT[arch])
    if isinstance(pattern, ArrayInfo):
        raise CheckpointError(f"{path}: per-layer sliding_window_pattern arrays are not supported yet")
    if isinstance(pattern, list):  # newer llama.cpp: one bool per layer (True = sliding)
        layer_types = [AttentionType.SLIDING if p else AttentionType.GLOBAL for p in pattern]
    else:
        layer_types = [
            AttentionType.SLIDING if (i + 1) % int(pattern) else AttentionType.GLOBAL for i in range(n_layers)
        ]
    d_head = int(req("attention.key_length"))
    names = set(reader.tensors)
    scaling_type = opt("rope.scaling.type")
    scaling = float(opt("rope.scaling.factor", 1.0)) if scaling_type == "linear" else 1.0
    if scaling_type not in (None, "none", "linear"):
        raise CheckpointError(f"{path}: unsupported rope scaling {scaling_type!r}")
    g3 = arch == "gemma3"
    theta = float(opt("rope.freq_base", 1e6 if g3 else 1e4))
    kwargs = dict(
        architecture=_ARCHITECTURES[arch],
        vocab_size=int(
            _field(reader, "tokenizer.ggml.tokens") or reader.tensors["token_embd.weight"].shape[0]
        ),
        d_model=int(req("embedding_length")),
        n_layers=n_layers,
        n_heads=int(req("attention.head_count")),
        n_kv_heads=int(opt("attention.head_count_kv", req("attention.head_count"))),
        d_head=d_head,
        d_mlp=int(req("feed_forward_length")),
        layer_types=tuple(layer_types),
        sliding_window=int(opt("attention.sliding_window", 4096)),
        # GGUF has no query_pre_attn_scalar; llama.cpp scales by key_length (override for Gemma 27B models).
        query_pre_attn_scalar=float(d_head),
        rope_theta_global=theta,
        rope_scaling_global=scaling,
        rope_theta_local=float(opt("rope.freq_base_swa", _LOCAL_ROPE_BASE_DEFAULT)) if g3 else theta,
        rope_scaling_local=1.0 if g3 else scaling,
        attn_logit_softcap=opt("attn_logit_softcapping", None if g3 else 50.0),
        final_logit_softcap=opt("final_logit_softcapping", None if g3 else 30.0),
        use_qk_norm="blk.0.attn_q_norm.weight" in names,
        rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(req("context_length")),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        eos_token_ids=(int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
    )
    if overrides:
        unknown = set(overrides) - set(kwargs)
        if unknown:
            raise ValueError(f"unknown config overrides {sorted(unknown)}; valid: {sorted(kwargs)}")
        kwargs.update(overrides)
    return ModelConfig(**kwargs)


def _iter_tensors(reader: GGUFFile, cfg: ModelConfig, path: Path) -> Iterator[tuple[str, Tensor]]:
    name_map = expand_name_map(GGUF_NAME_MAP, cfg.n_layers)
    for name, info in reader.tensors.items():
        if name not in name_map:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} for a {cfg.architecture} GGUF")
        try:
            tensor = torch.from_numpy(reader.dequantize(name))
        except Exception as exc:
            raise CheckpointError(
                f"{path}: tensor {name!r} (ggml type {info.qtype}) cannot be dequantised: {exc}"
            ) from exc
        if name.endswith("norm.weight"):
            tensor -= 1.0  # llama.cpp stores Gemma norm weights as 1 + w; the model applies (1 + w) itself
        yield name_map[name], tensor


def load_gguf(
    path: str | os.PathLike, *, device: torch.device, dtype: torch.dtype, config_overrides: dict | None = None
) -> HookedGemma:
    """Load a Gemma 2 / Gemma 3 ``.gguf`` file (any ggml quantisation the ``gguf`` package dequantises)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    reader = _open(path)
    cfg = config_from_gguf(reader, path, config_overrides)
    stat = path.stat()
    tok_cache = cache_dir() / "tokenizers" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}.json"
    tokenizer = None
    if "tokenizer.ggml.tokens" in reader.metadata:
        tokenizer = tokenizer_from_gguf(path, reader.metadata, cache_file=tok_cache)
    else:
        logger.warning("%s carries no vocabulary; the model will take token ids only", path.name)
    logger.info(
        "loading %s (%s, %d layers, %d tensors)",
        path.name,
        cfg.architecture,
        cfg.n_layers,
        len(reader.tensors),
    )
    return build_model(
        cfg,
        _iter_tensors(reader, cfg, path),
        source=str(path),
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
    )
