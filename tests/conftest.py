"""Shared fixtures: tiny random Gemma 2 / Gemma 3 checkpoints saved by transformers, the embedded model."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, norms included, so that every convention shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if "norm" in name else 0.15
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def tiny_hf_config(kind: str, **overrides):
    """Small configs with non-default head_dim, query_pre_attn_scalar and soft-caps, window 6."""
    from transformers import Gemma2Config, Gemma3TextConfig

    common = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=20,
        max_position_embeddings=128,
        sliding_window=6,
        query_pre_attn_scalar=30,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    if kind == "gemma2":
        return Gemma2Config(
            **{**common, "attn_logit_softcapping": 7.0, "final_logit_softcapping": 9.0, **overrides}
        )
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    return Gemma3TextConfig(**{**common, "rope_parameters": rope, "layer_types": layer_types, **overrides})


def make_hf_model(kind: str, seed: int = 0, **overrides):
    from transformers import Gemma2ForCausalLM, Gemma3ForCausalLM

    cls = Gemma2ForCausalLM if kind == "gemma2" else Gemma3ForCausalLM
    cfg = tiny_hf_config(kind, **overrides)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    _randomise(model, seed)
    return model


@pytest.fixture(scope="session", params=["gemma2", "gemma3"])
def tiny_checkpoint(request, tmp_path_factory):
    """(kind, transformers model, folder) for a random tiny model saved with save_pretrained."""
    kind = request.param
    hf = make_hf_model(kind)
    folder = tmp_path_factory.mktemp(f"tiny-{kind}")
    hf.save_pretrained(folder)
    return kind, hf, folder


@pytest.fixture(scope="session")
def embedded_model():
    from g2interp import load_model

    return load_model("gemma-3-270m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def embedded_hf():
    """transformers' own load of the same GGUF file: the reference for the embedded model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from g2interp.loading import embedded_model_path

    path = embedded_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer
