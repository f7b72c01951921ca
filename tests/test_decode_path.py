"""The decode path's shortcuts: few-row products, last-position logits, hook points skipped when unlistened.

Each shortcut must give what the plain computation gives (bitwise where the arithmetic is the same,
within float rounding where a kernel sums in another order) and must not change what listeners see.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_hook

from g2interp.model.hook_points import HookPoint, listened
from g2interp.model.kernels import as_w_xt, linear
from g2interp.model.layers import RotaryEmbedding, apply_rope
from tests.activations.act_helpers import one_thread, tiny_model


@pytest.fixture(scope="module")
def model():
    with one_thread():
        yield tiny_model(seed=3)


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 8, 33])
def test_linear_equals_f_linear_for_every_row_count(rows):
    gen = torch.Generator().manual_seed(rows)
    for W_OK in (torch.randn(1000, 96, generator=gen), torch.randn(96, 1000, generator=gen)):  # tall, wide
        for shape in [(rows, W_OK.shape[1]), (rows, 1, W_OK.shape[1]), (1, rows, W_OK.shape[1])]:
            x = torch.randn(*shape, generator=gen)
            out = linear(x, W_OK)
            ref = (x.double() @ W_OK.double().T).float()
            assert out.shape == ref.shape and out.is_contiguous()
            assert _rel(out, ref) < 1e-6
            if not as_w_xt(rows, x, W_OK):
                assert torch.equal(out, F.linear(x, W_OK))
    assert as_w_xt(1, x, torch.randn(1000, 96)) and not as_w_xt(1, x, torch.randn(96, 1000))
    assert not as_w_xt(8, x, torch.randn(1000, 96)) and as_w_xt(4, x, torch.randn(96, 1000))
    x_bf16, W_bf16 = torch.randn(rows, 96, generator=gen).bfloat16(), torch.randn(1000, 96).bfloat16()
    assert torch.equal(linear(x_bf16, W_bf16), F.linear(x_bf16, W_bf16))  # fp32 only


def test_linear_reads_strided_inputs():
    x_full = torch.randn(4, 2 * 96, generator=torch.Generator().manual_seed(0))
    x = x_full[:, ::2]  # not contiguous
    W_OK = torch.randn(50, 96, generator=torch.Generator().manual_seed(1))
    assert _rel(linear(x, W_OK), F.linear(x.contiguous(), W_OK)) < 1e-6


def test_signed_sin_rope_is_the_rotate_half_formula_bit_for_bit():
    rope = RotaryEmbedding(16, 10_000.0, 1.0)
    positions = torch.arange(40).reshape(2, 20) * 7
    cos, signed_sin = rope(positions, torch.float32)
    freqs = positions[..., None].float() * rope.inv_freq(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    ref_cos, ref_sin = emb.cos()[:, :, None], emb.sin()[:, :, None]
    assert torch.equal(cos, ref_cos)
    x = torch.randn(2, 20, 3, 16, generator=torch.Generator().manual_seed(2))
    x1, x2 = x.chunk(2, dim=-1)
    assert torch.equal(apply_rope(x, cos, signed_sin), x * ref_cos + torch.cat((-x2, x1), dim=-1) * ref_sin)


def test_last_only_logits_equal_the_last_column(model):
    tokens = model.tokenize(["hello there", "a much longer text here"], padding_side="left")
    full = model(*tokens)
    last = model(*tokens, last_only=True)
    assert last.shape == (2, 1, model.cfg.vocab_size)
    assert _rel(last, full[:, -1:]) < 1e-5


def test_last_only_leaves_final_norm_listeners_every_position(model):
    tokens = model.to_tokens("the final norm sees all of this")
    seen = {}

    def keep(x, hook):
        seen[hook.name] = x.clone()

    hooks = [("ln_final.hook_normalized", keep), ("ln_final.hook_scale", keep)]
    with model.hooks(fwd_hooks=hooks):
        last = model(tokens, last_only=True)
    assert seen["ln_final.hook_normalized"].shape == (1, tokens.shape[1], model.cfg.d_model)
    assert seen["ln_final.hook_scale"].shape == (1, tokens.shape[1], 1)
    assert torch.equal(last, model(tokens, last_only=True))


def test_listening_to_a_hook_changes_no_number(model):
    """Unlistened hook points are skipped and the q/k norms avoid a copy; listening takes the plain path."""
    tokens = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(4))
    plain = model(tokens)
    for name in [
        "blocks.1.attn.q_norm.hook_normalized",
        "blocks.1.attn.k_norm.hook_scale",
        "blocks.0.hook_mlp_out",
    ]:
        logits, cache = model.run_with_cache(tokens, [name])
        assert torch.equal(logits, plain), name
    cache = model.run_with_cache(tokens, ["blocks.1.attn.q_norm.hook_normalized"]).cache
    assert cache["blocks.1.attn.q_norm.hook_normalized"].shape == (
        2 * 12 * model.cfg.n_heads,
        model.cfg.d_head,
    )


def test_hook_points_still_call_module_hooks():
    hook = HookPoint()
    x = torch.randn(3)
    assert hook(x) is x and not listened(hook)
    calls = []
    handle = hook.register_forward_hook(lambda m, args, out: calls.append("own") or out * 2)
    assert torch.equal(hook(x), x * 2) and listened(hook)
    handle.remove()
    global_handle = register_module_forward_hook(lambda m, args, out: calls.append("global"))
    try:
        assert hook(x) is x
    finally:
        global_handle.remove()
    assert calls == ["own", "global"]


@pytest.mark.slow
def test_embedded_decode_logits_within_1e_5_of_the_full_forward(embedded_model):
    """The few-row kernels change the summation order of every decode step, and nothing else."""
    from g2interp import KVCache

    cfg = embedded_model.cfg
    texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "A"]
    for batch in (1, 4):
        tokens_BP, mask_BP = embedded_model.tokenize(texts[:batch], padding_side="left")
        B, P = tokens_BP.shape
        new_BN = torch.randint(3, 1000, (B, 5), generator=torch.Generator().manual_seed(batch))
        cache = KVCache(
            cfg.n_layers, B, cfg.n_kv_heads, P + 5, cfg.d_head, embedded_model.device, torch.float32
        )
        with torch.no_grad():
            steps = [embedded_model(tokens_BP, mask_BP, kv_cache=cache, last_only=True)]
            steps += [
                embedded_model(new_BN[:, i : i + 1], torch.ones(B, 1, dtype=torch.long), kv_cache=cache)
                for i in range(5)
            ]
            full = embedded_model(
                torch.cat([tokens_BP, new_BN], 1), torch.cat([mask_BP, torch.ones_like(new_BN)], 1)
            )
        decoded = torch.cat(steps, dim=1)
        assert _rel(decoded, full[:, P - 1 :]) < 1e-5, batch


def test_packed_few_row_products_equal_the_plain_ones_and_follow_the_weight():
    from g2interp.model.kernels import Linear

    lin = Linear(96, 300)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(300, 96, generator=gen))
        for rows in (1, 2, 4, 7, 8, 33):
            x = torch.randn(rows, 96, generator=gen)
            ref = (x.double() @ lin.weight.double().T).float()
            lin.clear_packed()
            assert _rel(lin(x), ref) < 1e-6
            assert (lin._packed is not None) == (rows < 8), rows  # 8 rows on: the plain product
        x = torch.randn(1, 1, 96, generator=gen)
        lin.weight[3] = 7.0  # tracked: the copy is rebuilt
        assert _rel(lin(x), (x.double() @ lin.weight.double().T).float()) < 1e-6
        lin.weight.data[5] = -7.0  # not tracked: stale until cleared
        lin.clear_packed()
        assert _rel(lin(x), (x.double() @ lin.weight.double().T).float()) < 1e-6
        lin.double()
        assert lin._packed is None and lin(x.double()).dtype == torch.float64
    lin.float()
    x = torch.randn(1, 96, generator=gen, requires_grad=True)
    lin(x).sum().backward()  # with gradients the plain product runs: the weight gets its gradient
    assert lin._packed is None and torch.allclose(lin.weight.grad, x.detach().expand(300, 96))


def test_decoding_is_the_same_without_packed_weights(model):
    texts = ["pack the weights", "or not"]
    out = model.generate(texts, 8, stop_at_eos=False).tokens
    model.pack_decode_weights = False
    try:
        assert not model.pack_decode_weights
        assert torch.equal(model.generate(texts, 8, stop_at_eos=False).tokens, out)
    finally:
        model.pack_decode_weights = True
    model.clear_decode_cache()
    assert all(b.mlp.down_proj._packed is None for b in model.blocks) and model._screen is None


def test_a_model_with_decoding_copies_deep_copies(model):
    import copy

    out = model.generate("copy me", 4, stop_at_eos=False).tokens
    assert model._screen is not None and model.blocks[0].mlp.down_proj._packed is not None
    twin = copy.deepcopy(model)  # the copies are opaque tensors: left behind and rebuilt
    assert twin._screen is None and twin.blocks[0].mlp.down_proj._packed is None
    assert torch.equal(twin.generate("copy me", 4, stop_at_eos=False).tokens, out)
    assert model._screen is not None
