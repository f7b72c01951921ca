"""Hook points, caching, temporary hooks and input validation on a tiny random checkpoint."""

from __future__ import annotations

import pytest
import torch

from g2interp import load_model

TL_BLOCK_HOOKS = [
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_in",
    "hook_mlp_out",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_z",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln1_post.hook_scale",
    "ln1_post.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "ln2_post.hook_scale",
    "ln2_post.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint[2], device="cpu")


@pytest.fixture
def tokens():
    return torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))


def test_transformer_lens_hook_names(model):
    names = set(model.hook_names)
    for layer in range(model.cfg.n_layers):
        for hook in TL_BLOCK_HOOKS:
            assert f"blocks.{layer}.{hook}" in names
        qk = {f"blocks.{layer}.attn.q_norm.hook_scale", f"blocks.{layer}.attn.k_norm.hook_normalized"}
        assert qk <= names if model.cfg.use_qk_norm else not (qk & names)
    assert {"hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"} <= names


def test_cache_shapes(model, tokens):
    cfg = model.cfg
    _, cache = model.run_with_cache(tokens, lambda n: n.startswith("blocks.1."))
    assert cache["blocks.1.attn.hook_q"].shape == (2, 10, cfg.n_heads, cfg.d_head)
    assert cache["blocks.1.attn.hook_k"].shape == (2, 10, cfg.n_kv_heads, cfg.d_head)
    assert cache["blocks.1.attn.hook_z"].shape == (2, 10, cfg.n_heads, cfg.d_head)
    assert cache["blocks.1.attn.hook_attn_scores"].shape == (2, cfg.n_heads, 10, 10)
    assert cache["blocks.1.mlp.hook_post"].shape == (2, 10, cfg.d_mlp)
    assert cache["blocks.1.ln1.hook_scale"].shape == (2, 10, 1)
    assert all(not t.requires_grad for t in cache.values())


def test_unknown_hook_name_lists_close_names(model, tokens):
    with pytest.raises(KeyError, match=r"blocks\.1\.hook_resid_post"):
        model.run_with_cache(tokens, ["blocks.1.hook_resid_pots"])
    with pytest.raises(KeyError, match="unknown hook name"):
        model.capture(tokens, ["nonsense"])


def test_auto_stop_runs_only_needed_blocks(model, tokens):
    calls = []
    handles = [
        b.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, b in enumerate(model.blocks)
    ]
    try:
        out, cache = model.run_with_cache(tokens, ["blocks.1.hook_resid_post"], stop_at_layer="auto")
        assert calls == [0, 1]
        assert out.shape == (2, 10, model.cfg.d_model)
        assert torch.equal(out, cache["blocks.1.hook_resid_post"])
        calls.clear()
        assert set(model.capture(tokens, ["blocks.0.attn.hook_z"])) == {"blocks.0.attn.hook_z"}
        assert calls == [0]
    finally:
        for h in handles:
            h.remove()


def test_stop_at_layer_matches_full_run(model, tokens):
    _, cache = model.run_with_cache(tokens, ["blocks.2.hook_resid_post"])
    resid = model(tokens, stop_at_layer=3)
    assert torch.equal(resid, cache["blocks.2.hook_resid_post"])
    with pytest.raises(ValueError, match="stop_at_layer"):
        model(tokens, stop_at_layer=99)


def test_temporary_hooks_removed_even_on_error(model, tokens):
    clean = model(tokens)

    def zero(x, hook):
        return torch.zeros_like(x)

    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", zero)])
    assert not torch.allclose(patched, clean)
    with (
        pytest.raises(RuntimeError, match="boom"),
        model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", zero)]),
    ):
        raise RuntimeError("boom")
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
    assert torch.equal(model(tokens), clean)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.rand(1, 4), TypeError, "integer ids"),
        (torch.tensor([[1, 2, 96]]), ValueError, r"\[0, 96\)"),
        (torch.tensor([[-1, 2]]), ValueError, r"\[0, 96\)"),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, "empty"),
        (torch.zeros(1, 2, 3, dtype=torch.long), ValueError, "shape"),
        ([1, 2, 3], TypeError, "torch.Tensor"),
        (torch.ones(1, 129, dtype=torch.long), ValueError, "max_position_embeddings"),
    ],
)
def test_bad_tokens_are_rejected(model, bad, error, match):
    with pytest.raises(error, match=match):
        model(bad)


def test_mask_shape_checked(model, tokens):
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(tokens, attention_mask=torch.ones(2, 3))


def test_sampling_is_seeded_and_top_p_small_is_greedy(model):
    prompt = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(2))
    a = model.generate(prompt, 8, temperature=1.0, seed=11, stop_at_eos=False)
    b = model.generate(prompt, 8, temperature=1.0, seed=11, stop_at_eos=False)
    assert torch.equal(a.tokens, b.tokens)
    greedy = model.generate(prompt, 8, stop_at_eos=False)
    nucleus = model.generate(prompt, 8, temperature=1.0, top_p=1e-6, seed=3, stop_at_eos=False)
    assert torch.equal(greedy.tokens, nucleus.tokens)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 2, top_p=0.0)


def test_generation_stops_at_eos(model):
    prompt = torch.randint(3, 96, (1, 5), generator=torch.Generator().manual_seed(9))
    free = model.generate(prompt, 6, stop_at_eos=False)
    first = free.new_tokens[0][0]

    # make the first generated token an end-of-sequence token for this test
    from dataclasses import replace

    model.cfg = replace(model.cfg, eos_token_ids=(first,))
    try:
        out = model.generate(prompt, 6)
    finally:
        model.cfg = replace(model.cfg, eos_token_ids=(1,))
    assert out.new_tokens == [[first]] and out.finished == [True]


def test_bad_text_is_rejected():
    from tests.activations.act_helpers import tiny_model

    model = tiny_model()
    with pytest.raises(ValueError, match="text 1 is empty"):
        model.tokenize(["fine", ""])
    with pytest.raises(TypeError, match="text 0 is a int"):
        model.tokenize([3])
    with pytest.raises(ValueError, match="no text given"):
        model.tokenize([])
    with pytest.raises(ValueError, match="tokens long; the limit is 3 tokens"):
        model.tokenize("a b c", max_length=3)
