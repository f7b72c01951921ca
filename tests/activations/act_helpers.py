"""Tiny model, tokenizer and corpus for the activation-store tests (also imported by subprocess workers)."""

from __future__ import annotations

from pathlib import Path

import torch

from g2interp import HookedGemma, ModelConfig
from g2interp.tokenizer import GemmaTokenizer
from tests.tiny import BOS, EOS, PAD, byte_tokenizer, one_thread  # noqa: F401  (re-exported to the tests)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CORPUS = FIXTURES / "corpus_small.jsonl"
HOOKS = ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.2.hook_mlp_out")


def tiny_tokenizer() -> GemmaTokenizer:
    """Byte-level BPE without merges: one token per UTF-8 byte, so any text round-trips exactly."""
    return GemmaTokenizer(byte_tokenizer(), bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def tiny_config(**overrides) -> ModelConfig:
    kwargs = dict(
        architecture="gemma3_text",
        vocab_size=300,
        d_model=32,
        n_layers=3,
        n_heads=2,
        n_kv_heads=1,
        d_head=16,
        d_mlp=64,
        layer_types=("sliding_attention", "sliding_attention", "full_attention"),
        sliding_window=8,
        query_pre_attn_scalar=16,
        rope_theta_global=1e6,
        rope_theta_local=1e4,
        use_qk_norm=True,
        max_position_embeddings=256,
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> HookedGemma:
    """A random tiny Gemma 3 (weights N(0, 0.02) from ``seed``) with the byte tokenizer."""
    model = HookedGemma(tiny_config(**overrides), tiny_tokenizer())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def worker_config(out: str | Path, **overrides):
    """The capture the subprocess tests run (killed, resumed, distributed) and compare against."""
    from g2interp.activations import CaptureConfig

    kwargs = dict(
        data=str(CORPUS),
        hooks=HOOKS,
        out=str(out),
        context_length=32,
        max_contexts=48,
        eval_contexts=6,
        batch_contexts=1,
        contexts_per_shard=2,
        progress=False,
    )
    kwargs.update(overrides)
    return CaptureConfig(**kwargs)


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store (relative path -> bytes), temp files included, to compare stores exactly."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def save_hf_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny random Gemma 3 saved by transformers (config.json, model.safetensors) plus the byte tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = tiny_config()
    hf_cfg = Gemma3TextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_head,
        max_position_embeddings=cfg.max_position_embeddings,
        sliding_window=cfg.sliding_window,
        query_pre_attn_scalar=cfg.query_pre_attn_scalar,
        layer_types=[t.value for t in cfg.layer_types],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_global},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_local},
        },
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    Gemma3ForCausalLM(hf_cfg).save_pretrained(folder)
    (Path(folder) / "tokenizer.json").write_text(tiny_tokenizer().backend.to_str())
    return Path(folder)
