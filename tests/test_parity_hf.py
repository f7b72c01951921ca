"""Numerical parity with transformers' Gemma2ForCausalLM / Gemma3ForCausalLM on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch

from g2interp import load_model

TOL = 1e-4


def _hf_outputs(hf, tokens, **kw):
    with torch.no_grad():
        return hf(tokens, output_hidden_states=True, **kw)


def test_config_read_from_checkpoint(tiny_checkpoint):
    _kind, hf, folder = tiny_checkpoint
    model = load_model(folder, device="cpu")
    assert [t.value for t in model.cfg.layer_types] == list(hf.config.layer_types)
    assert model.cfg.layer_types[0].value == "sliding_attention"  # transformers slides on layer 0
    assert model.cfg.query_pre_attn_scalar == 30 and model.cfg.d_head == 20
    assert model.cfg.n_params == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("seq_len", [5, 23])  # shorter and longer than the sliding window (6)
def test_logits_and_resid_match_transformers(tiny_checkpoint, seq_len):
    _kind, hf, folder = tiny_checkpoint
    model = load_model(folder, device="cpu")
    tokens = torch.randint(
        3, hf.config.vocab_size, (3, seq_len), generator=torch.Generator().manual_seed(seq_len)
    )
    ref = _hf_outputs(hf, tokens)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert torch.allclose(logits, ref.logits, atol=TOL, rtol=0), (logits - ref.logits).abs().max()
    n = model.cfg.n_layers
    for layer in range(n - 1):  # transformers' last hidden state is after the final norm
        diff = (cache[f"blocks.{layer}.hook_resid_post"] - ref.hidden_states[layer + 1]).abs().max()
        assert diff < TOL, (layer, diff)
    embed = model.run_with_cache(tokens, "hook_embed", stop_at_layer="auto").cache["hook_embed"]
    assert torch.allclose(embed, ref.hidden_states[0], atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        # global layers with linear RoPE interpolation (as Gemma 3 4B+), local layers plain
        (
            "gemma3",
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                }
            },
        ),
        # an unusual layer order must be honoured as written, not inferred from the model family
        (
            "gemma2",
            {"layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]},
        ),
    ],
)
def test_config_variants_match_transformers(tmp_path, kind, overrides):
    from tests.conftest import make_hf_model

    hf = make_hf_model(kind, seed=7, **overrides)
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path, device="cpu")
    assert [t.value for t in model.cfg.layer_types] == list(hf.config.layer_types)
    tokens = torch.randint(3, 96, (2, 40), generator=torch.Generator().manual_seed(8))
    assert torch.allclose(model(tokens), _hf_outputs(hf, tokens).logits, atol=TOL, rtol=0)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_batch_equals_each_text_alone(tiny_checkpoint, padding_side):
    _kind, hf, folder = tiny_checkpoint
    model = load_model(folder, device="cpu")
    gen = torch.Generator().manual_seed(1)
    lengths = [17, 4, 11]
    seqs = [torch.randint(3, hf.config.vocab_size, (n,), generator=gen) for n in lengths]
    width = max(lengths)
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, s in enumerate(seqs):
        span = slice(0, len(s)) if padding_side == "right" else slice(width - len(s), width)
        tokens[i, span], mask[i, span] = s, 1
    logits, cache = model.run_with_cache(tokens, ["blocks.2.hook_resid_post"], attention_mask=mask)
    for i, s in enumerate(seqs):
        ref = _hf_outputs(hf, s[None])
        span = slice(0, len(s)) if padding_side == "right" else slice(width - len(s), width)
        assert torch.allclose(logits[i, span], ref.logits[0], atol=TOL, rtol=0)
        assert torch.allclose(
            cache["blocks.2.hook_resid_post"][i, span], ref.hidden_states[3][0], atol=TOL, rtol=0
        )


def test_explicit_attention_path_matches_fused(tiny_checkpoint):
    """Asking for the pattern switches to the materialised path; results must not change."""
    _, hf, folder = tiny_checkpoint
    model = load_model(folder, device="cpu")
    tokens = torch.randint(3, hf.config.vocab_size, (2, 15), generator=torch.Generator().manual_seed(3))
    fused = model(tokens)
    logits, cache = model.run_with_cache(tokens, lambda n: n.endswith("hook_pattern"))
    assert torch.allclose(fused, logits, atol=TOL, rtol=0)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, 4, 15, 15)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 15), atol=1e-5)
    # layer 0 slides with window 6: query 14 sees keys 9..14 only
    assert (pattern[:, :, 14, :9] == 0).all() and (pattern[:, :, 14, 9:] > 0).all()


def test_greedy_generation_matches_transformers(tiny_checkpoint):
    _, hf, folder = tiny_checkpoint
    model = load_model(folder, device="cpu")
    prompt = torch.randint(3, hf.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(4))
    ref = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0)
    out = model.generate(prompt, 12, stop_at_eos=False)
    assert out.tokens.tolist() == ref.tolist()


def test_kv_cache_decoding_equals_full_forward(tiny_checkpoint):
    _, hf, folder = tiny_checkpoint
    model = load_model(folder, device="cpu")
    from g2interp import KVCache

    tokens = torch.randint(3, hf.config.vocab_size, (2, 14), generator=torch.Generator().manual_seed(5))
    full = model(tokens)
    cfg = model.cfg
    cache = KVCache(cfg.n_layers, 2, cfg.n_kv_heads, 14, cfg.d_head, torch.device("cpu"), torch.float32)
    first = model(tokens[:, :8], kv_cache=cache)
    steps = [model(tokens[:, i : i + 1], kv_cache=cache) for i in range(8, 14)]
    incremental = torch.cat([first, *steps], dim=1)
    assert torch.allclose(incremental, full, atol=TOL, rtol=0)


def test_bf16_runs_close_to_fp32(tiny_checkpoint):
    _, hf, folder = tiny_checkpoint
    model32 = load_model(folder, device="cpu", dtype=torch.float32)
    model16 = load_model(folder, device="cpu", dtype="bfloat16")
    tokens = torch.randint(3, hf.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(6))
    l32, l16 = model32(tokens), model16(tokens)
    assert l16.dtype == torch.bfloat16
    assert (l16.float() - l32).abs().max() < 0.1 * l32.abs().max()
