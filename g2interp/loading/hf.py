"""Hugging Face checkpoint folders (``config.json`` + safetensors, sharded or not) and the local hub cache."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from g2interp.config import ModelConfig
from g2interp.constants import (
    HF_CONFIG_FILE,
    HF_SAFETENSORS_FILE,
    HF_SAFETENSORS_INDEX_FILE,
    HF_TOKENIZER_FILE,
)
from g2interp.loading.weights import CheckpointError, build_model, expand_name_map
from g2interp.model.gemma import HookedGemma
from g2interp.tokenizer import GemmaTokenizer

logger = logging.getLogger(__name__)

# transformers' Gemma2/Gemma3 parameter names -> ours (one map for both; q/k norms exist in Gemma 3 only).
HF_NAME_MAP = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "ln_final.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{}.input_layernorm.weight": "blocks.{}.ln1.weight",
    "model.layers.{}.self_attn.q_proj.weight": "blocks.{}.attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "blocks.{}.attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "blocks.{}.attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "blocks.{}.attn.o_proj.weight",
    "model.layers.{}.self_attn.q_norm.weight": "blocks.{}.attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "blocks.{}.attn.k_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.ln1_post.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "blocks.{}.ln2.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "blocks.{}.ln2_post.weight",
    "model.layers.{}.mlp.gate_proj.weight": "blocks.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.up_proj.weight": "blocks.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.down_proj.weight": "blocks.{}.mlp.down_proj.weight",
}
# Multimodal Gemma 3 folders nest the language model; these prefixes map back to the text-only names.
_MULTIMODAL_PREFIXES = {
    "language_model.model.": "model.",
    "model.language_model.": "model.",
    "language_model.lm_head.": "lm_head.",
}
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def read_hf_config(folder: Path) -> dict:
    path = folder / HF_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {HF_CONFIG_FILE}: not a Hugging Face model folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def safetensors_files(folder: Path) -> list[Path]:
    """Weight files of a folder: the shards its index names (all must exist), or ``model.safetensors``."""
    index = folder / HF_SAFETENSORS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a safetensors index (no weight_map): {exc}") from exc
        shards = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shards named in {index.name} are missing: {missing}")
        return shards
    single = folder / HF_SAFETENSORS_FILE
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise CheckpointError(
        f"{folder} holds no safetensors weights ({HF_SAFETENSORS_FILE} or an index); .bin pickles are not loaded"
    )


def _iter_tensors(files: list[Path], cfg: ModelConfig) -> Iterator[tuple[str, Tensor]]:
    name_map = expand_name_map(HF_NAME_MAP, cfg.n_layers)
    for path in files:
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        with handle as f:
            for key in f.keys():
                name = key
                for prefix, repl in _MULTIMODAL_PREFIXES.items():
                    if name.startswith(prefix):
                        name = repl + name[len(prefix) :]
                if name.startswith(_VISION_PREFIXES):
                    continue  # vision encoder of a multimodal Gemma 3: not part of the text model
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # tied checkpoints may still carry a copy of the embedding
                if name not in name_map:
                    raise CheckpointError(
                        f"{path.name}: unexpected tensor {key!r} for a {cfg.architecture} checkpoint"
                    )
                try:
                    tensor = f.get_tensor(key)
                except Exception as exc:
                    raise CheckpointError(
                        f"{path}: tensor {key!r} cannot be read ({exc}); is the file truncated?"
                    ) from exc
                yield name_map[name], tensor


def load_hf_folder(
    folder: str | os.PathLike,
    *,
    device: torch.device,
    dtype: torch.dtype,
    config_overrides: dict | None = None,
) -> HookedGemma:
    """Load a ``gemma2`` / ``gemma3_text`` / ``gemma3`` folder (language-model weights only)."""
    folder = Path(folder)
    raw = read_hf_config(folder)
    if config_overrides:
        raw = {**raw, **config_overrides}
    cfg = ModelConfig.from_hf_config(raw)
    files = safetensors_files(folder)
    tokenizer = None
    if (folder / HF_TOKENIZER_FILE).is_file():
        eos = cfg.eos_token_ids[0]
        tokenizer = GemmaTokenizer.from_file(
            folder / HF_TOKENIZER_FILE, cfg.bos_token_id, eos, cfg.pad_token_id
        )
    else:
        logger.warning("%s has no %s; the model will take token ids only", folder, HF_TOKENIZER_FILE)
    logger.info(
        "loading %s (%s, %d layers) from %d file(s)", folder, cfg.architecture, cfg.n_layers, len(files)
    )
    return build_model(
        cfg, _iter_tensors(files, cfg), source=str(folder), tokenizer=tokenizer, device=device, dtype=dtype
    )


def resolve_hub_id(repo_id: str) -> Path:
    """The local snapshot folder of a hub id, offline; a clear error naming the cache when absent."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:
        raise FileNotFoundError(
            f"{repo_id!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}); g2interp never downloads. "
            f"Copy the checkpoint folder there (or pass its path) and try again."
        ) from exc
