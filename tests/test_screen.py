"""Greedy decoding's screened unembedding: the argmax of the fp32 logits, found from a half-precision screen.

The screen must return exactly what ``argmax`` of the full fp32 logits returns (ties to the lowest id,
soft-capped or not), keep its error inside the bound it assumes, fall back where it cannot serve, and
never serve a weight that changed since it was built.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from g2interp.model import screen
from g2interp.model.screen import ScreenedUnembedding
from tests.activations.act_helpers import one_thread, tiny_model

pytestmark = pytest.mark.skipif(
    not screen.supported(torch.zeros(2, 2)), reason="this torch build has no FBGEMM fp16 GEMM"
)


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


def _weights(seed: int, V: int = 5000, M: int = 64) -> torch.Tensor:
    """Rows of very different norms, as embeddings have."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(V, M, generator=gen) * torch.exp(torch.randn(V, 1, generator=gen))


def test_argmax_equals_the_full_products_argmax():
    for seed in range(4):
        W = _weights(seed)
        scr = ScreenedUnembedding(W)
        gen = torch.Generator().manual_seed(100 + seed)
        for B in (1, 2, 4):
            x = torch.randn(B, W.shape[1], generator=gen) * 10 ** torch.randn(B, 1, generator=gen)
            assert torch.equal(scr.argmax(x, W), F.linear(x, W).argmax(-1))


def test_ties_go_to_the_lowest_id():
    """Small integers multiply and add exactly in any order, so ties are real ties for every kernel."""
    gen = torch.Generator().manual_seed(5)
    W = torch.randint(-3, 4, (5000, 64), generator=gen).float()
    scr = ScreenedUnembedding(W)
    for _ in range(20):
        x = torch.randint(-3, 4, (3, 64), generator=gen).float()
        full = F.linear(x, W)
        assert torch.equal(scr.argmax(x, W), full.argmax(-1))
    W[[77, 4000, 4321]] = 3.0  # three copies of the best row for x
    x = torch.ones(1, 64)
    scr = ScreenedUnembedding(W)
    assert scr.argmax(x, W).item() == 77 == F.linear(x, W).argmax(-1).item()


def test_the_screen_stays_inside_its_bound_and_screens():
    """The true argmax is always a candidate, and candidates are few: the screen does its job."""
    counts = []
    for seed in range(3):
        W = _weights(seed)
        scr = ScreenedUnembedding(W)
        x = torch.randn(64, W.shape[1], generator=torch.Generator().manual_seed(seed))
        approx = scr.screen(x)
        exact = (x.double() @ W.double().T).float()
        err = (approx - exact).abs()
        assert (err <= scr.slack * x.norm(dim=-1, keepdim=True)).all()
        cand = scr.candidates(x)
        assert cand.gather(1, exact.argmax(-1, keepdim=True)).all()
        counts += cand.sum(-1).tolist()
    assert max(counts) < 50, counts


def test_fbgemm_multiplies_by_the_weights_rounded_to_fp16():
    """The bound's premise: the packed copy holds ``W.half()`` (subnormals included), summed in fp32."""
    W = _weights(6, V=300)
    W[3, :4] = torch.tensor([1e-6, 3e-8, -1e-7, 6.1e-5])  # fp16 subnormals
    before = W.clone()
    scr = ScreenedUnembedding(W)
    assert torch.equal(W, before)
    unpacked = torch.cat([torch.ops.quantized.linear_unpack_fp16(p)[0] for p in scr.packed])
    assert torch.equal(unpacked, W.half().float())
    x = torch.randn(2, W.shape[1], generator=torch.Generator().manual_seed(6))
    exact = (x.double() @ W.half().double().T).float()
    assert ((scr.screen(x) - exact).abs().max() / exact.abs().max()).item() < 1e-6


def test_soft_capped_argmax_equals_the_capped_products_argmax():
    W = _weights(7)
    scr = ScreenedUnembedding(W)
    gen = torch.Generator().manual_seed(8)
    for cap in (30.0, 5.0, 0.5):  # from no effect to saturating every logit (the full product then)
        x = torch.randn(4, W.shape[1], generator=gen)
        capped = torch.tanh(F.linear(x, W) / cap) * cap
        assert torch.equal(scr.argmax(x, W, softcap=cap), capped.argmax(-1)), cap


def test_rows_with_too_many_candidates_take_the_full_product(monkeypatch):
    W = _weights(9)
    x = torch.randn(3, W.shape[1], generator=torch.Generator().manual_seed(9))
    x[1, 0] = float("nan")
    monkeypatch.setattr(screen, "MAX_CANDIDATES", 0)
    out = ScreenedUnembedding(W).argmax(x, W)
    assert torch.equal(out, F.linear(x, W).argmax(-1))


def test_weights_beyond_fp16_make_every_row_a_candidate():
    W = _weights(10)
    W[17] = 1e6  # overflows fp16
    before = W.clone()
    scr = ScreenedUnembedding(W)
    assert torch.equal(W, before)  # FBGEMM would have saturated it in place
    x = torch.randn(2, W.shape[1], generator=torch.Generator().manual_seed(10))
    assert scr.slack == float("inf") and scr.candidates(x).all()
    assert torch.equal(scr.argmax(x, W), F.linear(x, W).argmax(-1))


def test_unsupported_weights_are_named():
    assert not screen.supported(torch.zeros(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="fp32 CPU weight"):
        ScreenedUnembedding(torch.zeros(4, 4, dtype=torch.bfloat16))


def test_greedy_generation_is_the_same_with_and_without_the_screen():
    model = tiny_model(seed=11)
    texts = ["hello there", "a longer prompt for the batch", "x"]
    seen = []
    hooks = [("blocks.1.hook_resid_post", lambda x, hook: x * 1.5)]  # steering-like edits are seen
    for use in (True, False):
        model.screen_greedy = use
        out = model.generate(texts, 12, stop_at_eos=False)
        hooked = model.generate(texts[:1], 12, stop_at_eos=False, fwd_hooks=hooks)
        seen.append((out.tokens, hooked.tokens))
    assert model._screen is not None
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])
    assert not torch.equal(seen[0][1], seen[0][0][:1])


def test_an_edited_unembedding_is_never_served_stale():
    model = tiny_model(seed=12)
    tokens = model.to_tokens("edit the unembedding")
    first = model.generate(tokens, 1).new_tokens[0][0]
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    x = model.ln_final(resid)[0, -1]
    target = (first + 7) % model.cfg.vocab_size
    with torch.no_grad():  # tracked by PyTorch: the screen is rebuilt
        model.W_U[target] = x / x.norm() * 10
    assert model.generate(tokens, 1).new_tokens[0][0] == target
    model.W_U.data[first + 3] = x / x.norm() * 20  # .data is not tracked: clear the cache by hand
    model.clear_decode_cache()
    assert model.generate(tokens, 1).new_tokens[0][0] == first + 3
    model.screen_greedy = False
    assert model.generate(tokens, 1).new_tokens[0][0] == first + 3


def test_final_norm_listeners_see_every_position_in_greedy_decoding():
    model = tiny_model(seed=13)
    tokens = model.to_tokens("listen to the final norm")
    shapes = []
    hooks = [("ln_final.hook_normalized", lambda x, hook: shapes.append(tuple(x.shape)))]
    model.generate(tokens, 2, fwd_hooks=hooks, stop_at_eos=False)
    assert shapes == [(1, tokens.shape[1], model.cfg.d_model), (1, 1, model.cfg.d_model)]


def test_concurrent_greedy_generation_on_one_model():
    """Threads sharing a model (the explorer's sessions) may build and replace its decoding copies at once."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_model(seed=14)
    texts = ["one thread", "another thread", "a third", "and a fourth"]
    expected = [model.generate(t, 6, stop_at_eos=False).tokens for t in texts]
    for _ in range(3):
        model.clear_decode_cache()
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda t: model.generate(t, 6, stop_at_eos=False).tokens, texts))
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
