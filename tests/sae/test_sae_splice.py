"""SAEs inside the model: splicing (run_with_saes, run_with_cache(saes=...), model.saes) and latent
steering during generation, each against the same intervention written by hand with run_with_hooks."""

from __future__ import annotations

import pytest
import torch

from g2interp import Steering
from g2interp.sae import JumpReLUSAE, SAEConfig, splice
from tests.activations.act_helpers import one_thread, tiny_model

HOOK = "blocks.1.hook_resid_post"
D_MODEL, D_SAE = 32, 48
# The error term puts x back as x̂ + (x - x̂): exact up to fp32 rounding of activations up to ~20,
# which the later blocks carry to logits up to ~35; measured 6e-6 absolute, so 1e-4 leaves ~15x room.
ROUNDING = dict(rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def model():
    with one_thread():
        model = tiny_model(seed=1)
        with torch.no_grad():  # embeddings of std 1, so that logits (tied) vary from token to token
            model.embed_tokens.weight.copy_(torch.randn(model.cfg.vocab_size, D_MODEL, generator=gen(1)))
        yield model


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_sae(
    hook_name: str = HOOK, d_in: int = D_MODEL, d_sae: int = D_SAE, seed: int = 0, **kw
) -> JumpReLUSAE:
    """Pre-activations of order 1 on this model's residual stream; ~40 % of latents fire."""
    sae = JumpReLUSAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=hook_name, **kw))
    g = gen(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / (5 * d_in**0.5))
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g))
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
        sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
    return sae


@pytest.fixture(scope="module")
def sae():
    return random_sae()


@pytest.fixture
def tokens(model):
    return torch.randint(3, model.cfg.vocab_size, (2, 9), generator=gen(0))


def no_hooks_attached(model, *extra) -> bool:
    points = [*model.hook_dict.values(), *extra]
    return not any(hp._forward_hooks or hp.fwd_hooks for hp in points)


def busiest_latent(model, sae, tokens) -> int:
    """The latent that fires at the most positions of ``tokens`` (so that steering it shows)."""
    x_BQD = model.run_with_cache(tokens, HOOK).cache[HOOK]
    return int((sae.encode(x_BQD) > 0).sum((0, 1)).argmax())


def test_run_with_saes_equals_the_reconstruction_patched_in_by_hand(model, sae, tokens):
    with torch.no_grad():
        spliced = model.run_with_saes(tokens, [sae])
        by_hand = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: sae(act))])
        clean = model(tokens)
    assert torch.equal(spliced, by_hand)
    assert not torch.allclose(spliced, clean, atol=1e-2)
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0  # left padding goes through forward's kwargs
    with torch.no_grad():
        assert torch.equal(
            model.run_with_saes(tokens, sae, attention_mask=mask),
            model.run_with_hooks(tokens, mask, fwd_hooks=[(HOOK, lambda act, hook: sae(act))]),
        )


@pytest.mark.parametrize("reshape_hook_z", [True, False])
def test_hook_z_saes_read_the_heads_flattened(model, tokens, reshape_hook_z):
    z_hook = "blocks.0.attn.hook_z"  # [B, Q, 2 heads, 16]
    sae = random_sae(z_hook, d_in=32, seed=2, reshape_hook_z=reshape_hook_z)

    def by_hand(act, hook):
        return sae.decode(sae.encode(act.flatten(-2))).reshape(act.shape)

    with torch.no_grad():
        assert torch.equal(
            model.run_with_saes(tokens, [sae]), model.run_with_hooks(tokens, fwd_hooks=[(z_hook, by_hand)])
        )


def test_error_term_gives_the_clean_run_and_latent_edits_still_show(model, sae, tokens):
    with torch.no_grad():
        clean = model(tokens)
        with_error = model.run_with_saes(tokens, [sae], use_error_term=True)
    torch.testing.assert_close(with_error, clean, **ROUNDING)
    latent = busiest_latent(model, sae, tokens)

    def ablate(f_BQF, hook):
        f_BQF = f_BQF.clone()
        f_BQF[..., latent] = 0
        return f_BQF

    with torch.no_grad():
        edited = model.run_with_saes(
            tokens, [sae], use_error_term=True, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", ablate)]
        )
        with model.steer([(sae, latent, 0.0)]):
            steered = model(tokens)
    torch.testing.assert_close(edited, steered, **ROUNDING)  # SAELens's edit == our steering
    assert not torch.allclose(edited, clean, atol=1e-2)


@pytest.mark.parametrize("use_error_term", [True, False])
def test_run_with_cache_keeps_the_saes_latents_under_saelens_names(model, sae, tokens, use_error_term):
    clean_x = model.run_with_cache(tokens, HOOK).cache[HOOK]
    names = [
        HOOK,
        *(f"{HOOK}.hook_sae_{p}" for p in ("input", "acts_pre", "acts_post", "recons", "error", "output")),
    ]
    out, cache = model.run_with_cache(tokens, names, saes=[sae], use_error_term=use_error_term)
    got = {name.removeprefix(f"{HOOK}.hook_sae_"): t for name, t in cache.items() if name != HOOK}
    x, f, recons = got["input"], got["acts_post"], got["recons"]
    B, Q = tokens.shape
    assert x.shape == recons.shape == got["output"].shape == (B, Q, D_MODEL)
    assert f.shape == got["acts_pre"].shape == (B, Q, D_SAE)
    assert torch.equal(x, clean_x)
    assert torch.equal(got["acts_pre"], sae.pre_activations(x))
    assert torch.equal(f, sae.encode(x)) and 0 < (f > 0).float().mean() < 1
    assert torch.equal(recons, sae.decode(f))
    if use_error_term:
        assert torch.equal(got["error"], x - recons)
        assert torch.equal(got["output"], recons + (x - recons))
    else:
        assert "error" not in got  # fires only with the error term, as in SAELens
        assert torch.equal(got["output"], recons)
    assert torch.equal(cache[HOOK], cache[f"{HOOK}.hook_sae_output"])  # the hook holds what flows on
    with torch.no_grad():
        assert torch.equal(out, model.run_with_saes(tokens, [sae], use_error_term=use_error_term))
    # filters see the SAE names; "auto" stops after the SAE's block
    out, cache = model.run_with_cache(
        tokens, lambda n: "hook_sae_acts" in n, saes=[sae], stop_at_layer="auto"
    )
    assert sorted(cache) == [f"{HOOK}.hook_sae_acts_post", f"{HOOK}.hook_sae_acts_pre"]
    assert out.shape == (B, Q, D_MODEL)  # the residual stream after block 1
    with pytest.raises(KeyError, match="hook_sae_acts_post"):
        model.run_with_cache(tokens, [f"{HOOK}.hook_sae_act_post"], saes=[sae])
    assert no_hooks_attached(model)


def test_an_sae_can_be_read_at_another_hook(model, tokens):
    sae = random_sae(hook_name="", seed=3)
    other = "blocks.0.hook_resid_post"
    with torch.no_grad():
        assert torch.equal(
            model.run_with_saes(tokens, [(other, sae)]),
            model.run_with_hooks(tokens, fwd_hooks=[(other, lambda act, hook: sae(act))]),
        )


def ablation_by_hand(sae, latent):
    def hook(act, hook):
        f_BQ = sae.encode(act)[..., latent]
        return act - f_BQ[..., None] * sae.W_dec[latent]

    return hook


def test_clamping_a_latent_to_zero_equals_ablating_it_by_hand(model, sae, tokens):
    latent = busiest_latent(model, sae, tokens)
    with torch.no_grad():
        with model.steer([(sae, latent, 0.0)]):
            steered = model(tokens)
        by_hand = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, ablation_by_hand(sae, latent))])
        clean = model(tokens)
    torch.testing.assert_close(steered, by_hand, rtol=1e-5, atol=1e-5)  # the encoder column alone vs all
    assert not torch.allclose(steered, clean, atol=1e-2)
    assert no_hooks_attached(model)

    prompts = ["ab", "a longer prompt"]  # left-padded batch
    kwargs = dict(max_new_tokens=10, stop_at_eos=False)
    steered_gen = model.generate(prompts, steer=[Steering(sae, latent, 0.0)], **kwargs)
    with model.hooks(fwd_hooks=[(HOOK, ablation_by_hand(sae, latent))]):
        by_hand_gen = model.generate(prompts, **kwargs)
    assert steered_gen.new_tokens == by_hand_gen.new_tokens
    stream = list(model.generate_stream(prompts[1], steer=[(sae, latent, 0.0)], **kwargs))
    assert stream == steered_gen.new_tokens[1]
    assert no_hooks_attached(model)


def test_steering_modes_change_only_that_latents_share(model, sae, tokens):
    l1, l2 = 3, 7
    w1, w2 = sae.W_dec[l1], sae.W_dec[l2]

    def by_hand(act, hook):
        f_BQF = sae.encode(act)
        return act + (2.5 - f_BQF[..., l1, None]) * w1 + 4.0 * w2  # l1 clamped to 2.5, l2 added 4

    with torch.no_grad():
        with model.steer([(sae, l1, 2.5), Steering(sae, l2, 4.0, mode="add")]):
            steered = model(tokens)
        torch.testing.assert_close(
            steered, model.run_with_hooks(tokens, fwd_hooks=[(HOOK, by_hand)]), rtol=1e-5, atol=1e-5
        )

        def scaled(act, hook):
            return act + (3.0 - 1.0) * sae.encode(act)[..., l1, None] * w1

        with model.steer([(sae, l1, ("scale", 3.0))]):
            steered = model(tokens)
        torch.testing.assert_close(
            steered, model.run_with_hooks(tokens, fwd_hooks=[(HOOK, scaled)]), rtol=1e-5, atol=1e-5
        )


def test_steering_works_with_the_kv_cache_at_every_position(model, sae):
    prompt = model.to_tokens("steer me")
    P, N = prompt.shape[1], 12
    steer = [(sae, 5, ("add", 8.0))]
    out = model.generate(prompt, N, steer=steer, stop_at_eos=False)
    clean = model.generate(prompt, N, stop_at_eos=False)
    assert out.new_tokens != clean.new_tokens
    with torch.no_grad(), model.steer(steer):  # one uncached pass over the whole sequence
        logits = model(out.tokens)
    assert torch.equal(logits[0, P - 1 : -1].argmax(-1), out.tokens[0, P:])


def test_everything_is_detached_on_exit_also_on_errors(model, sae, tokens):
    with torch.no_grad():
        clean = model(tokens)
        with model.saes([sae]) as spliced:
            inner = list(spliced.hook_dict.values())
            assert not torch.equal(model(tokens), clean)
            with spliced.hooks([(f"{HOOK}.hook_sae_acts_post", lambda f, hook: f * 0)]):
                assert not no_hooks_attached(model, *inner)
            assert not any(hp._forward_hooks for hp in inner)
        assert no_hooks_attached(model, *inner) and torch.equal(model(tokens), clean)
        with pytest.raises(RuntimeError, match="boom"), model.saes([sae]) as spliced:
            with spliced.hooks([(f"{HOOK}.hook_sae_recons", lambda x, hook: x)]):
                raise RuntimeError("boom")
        assert no_hooks_attached(model, *spliced.hook_dict.values()) and torch.equal(model(tokens), clean)
        with pytest.raises(RuntimeError, match="boom"), model.steer([(sae, 0, 1.0)]):
            raise RuntimeError("boom")
        with pytest.raises(ValueError, match="reads 16"):  # raised inside the forward pass
            model.run_with_saes(tokens, [random_sae(d_in=16)])
        assert no_hooks_attached(model) and torch.equal(model(tokens), clean)
    # a stream holds the steering hooks only during its own forward passes
    stream = model.generate_stream("abc", 5, steer=[(sae, 0, 1.0)])
    next(stream)
    assert no_hooks_attached(model)
    stream.close()


def test_bad_input_is_refused_with_the_valid_range_or_names(model, sae, tokens):
    with pytest.raises(ValueError, match=r"valid latents are \[0, 48\)"):
        Steering(sae, 48, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 48\)"):
        model.generate("ab", 3, steer=[(sae, -1, 1.0)])
    with pytest.raises(ValueError, match=rf"{HOOK} gives .*width 32.*the SAE reads 16"):
        model.generate("ab", 3, steer=[(random_sae(d_in=16), 0, 1.0)])
    with pytest.raises(
        ValueError, match=r"not a hook of this model; closest valid names: \['blocks\.\d\.hook_resid_post'"
    ):
        model.generate_stream("ab", 3, steer=[(random_sae("blocks.9.hook_resid_post"), 0, 1.0)])
    with pytest.raises(ValueError, match="not a hook of this model"):
        model.run_with_saes(tokens, [random_sae("blocks.1.resid_post")])
    with pytest.raises(ValueError, match="no cfg.hook_name"), model.saes([random_sae("")]):
        pass
    with pytest.raises(ValueError, match="one SAE per hook"):
        model.run_with_saes(tokens, [sae, random_sae(seed=5)])
    with pytest.raises(ValueError, match="steered twice"):
        model.generate("ab", 3, steer=[(sae, 1, 1.0), (sae, 1, ("add", 2.0))])
    with pytest.raises(ValueError, match="mode must be one of"):
        Steering(sae, 1, 1.0, mode="set")
    with pytest.raises(ValueError, match="finite"):
        Steering(sae, 1, float("nan"))
    with pytest.raises(TypeError, match="int index"):
        Steering(sae, True, 1.0)
    with pytest.raises(TypeError, match="a steering is"):
        model.generate("ab", 3, steer=[(sae, 1)])
    with pytest.raises(KeyError, match="closest valid names"):
        model.generate_stream("ab", 3, fwd_hooks=[("blocks.1.hook_resid_pots", lambda x, hook: x)])
    assert no_hooks_attached(model)


@pytest.mark.parametrize("use_error_term", [False, True])
def test_names_and_values_match_saelens_hooked_sae_transformer(tmp_path, use_error_term):
    """On a TransformerLens model, our splice caches what SAELens caches, under the same names."""
    import warnings

    from sae_lens import SAE, HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, d_head=16, n_heads=2, d_mlp=64, d_vocab=50, n_ctx=16, act_fn="gelu", seed=0
    )
    tl_model = HookedSAETransformer(cfg).eval()
    sae = random_sae("blocks.0.hook_resid_post", seed=4, apply_b_dec_to_input=True)
    sae.save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SAE.load_from_disk(tmp_path)
    tokens = torch.randint(0, 50, (2, 7), generator=gen(0))
    logits_ref, cache_ref = tl_model.run_with_cache_with_saes(
        tokens, saes=[theirs], use_error_term=use_error_term
    )
    ours: dict[str, torch.Tensor] = {}

    def save(t, hook):
        ours[hook.name] = t.detach()

    with torch.no_grad(), splice(tl_model, [sae], use_error_term=use_error_term) as spliced:
        with spliced.hooks([(lambda name: "hook_sae" in name, save)]):
            logits = tl_model(tokens)
    assert sorted(ours) == sorted(n for n in cache_ref.keys() if "hook_sae" in n)
    assert ("blocks.0.hook_resid_post.hook_sae_error" in ours) == use_error_term
    assert torch.equal(logits, logits_ref)
    for name, tensor in ours.items():
        assert torch.equal(tensor, cache_ref[name]), name


# ---------------------------------------------------------------- transcoders
MLP_IN, MLP_OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"


def random_transcoder(skip: bool, layer: int = 1, d_in: int = D_MODEL, d_out: int = D_MODEL, seed: int = 6):
    """A transcoder reading ``blocks.<layer>.hook_mlp_in`` (of order 1 after the pre-norm)."""
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=D_SAE,
        d_out=d_out,
        hook_name=f"blocks.{layer}.hook_mlp_in",
        hook_name_out=f"blocks.{layer}.hook_mlp_out",
        affine_skip=skip,
    )
    sae = JumpReLUSAE(cfg)
    g = gen(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, D_SAE, generator=g) / (2 * d_in**0.5))
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.1)
        sae.W_dec.copy_(torch.randn(D_SAE, d_out, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(d_out, generator=g) * 0.1)
        sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.5)
        if skip:
            sae.W_skip.copy_(torch.randn(d_out, d_in, generator=g) * 0.2)
    return sae


def transcoder_by_hand(tc, edit=None, layer: int = 1):
    """Hooks that replace hook_mlp_out by ``edit(tc, mlp_in, mlp_out)`` (default ``tc(mlp_in)``)."""
    seen = {}

    def read(act, hook):
        seen["x"] = act

    def write(act, hook):
        return tc(seen["x"]) if edit is None else edit(tc, seen["x"], act)

    return [(f"blocks.{layer}.hook_mlp_in", read), (f"blocks.{layer}.hook_mlp_out", write)]


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
def test_transcoder_replaces_mlp_out_with_its_output_on_mlp_in(model, tokens, skip):
    tc = random_transcoder(skip)
    with torch.no_grad():
        spliced = model.run_with_saes(tokens, [tc])
        by_hand = model.run_with_hooks(tokens, fwd_hooks=transcoder_by_hand(tc))
        clean = model(tokens)
        assert torch.equal(spliced, by_hand)
        assert not torch.allclose(spliced, clean, atol=1e-2)
        # (hook, transcoder) reads another layer's MLP input and writes that layer's MLP output
        other = random_transcoder(skip, layer=0)
        assert torch.equal(
            model.run_with_saes(tokens, [("blocks.0.hook_mlp_in", tc)]),
            model.run_with_hooks(tokens, fwd_hooks=transcoder_by_hand(tc, layer=0)),
        )
        # with positions, the others keep their MLP output
        keep = torch.ones_like(tokens, dtype=torch.bool)
        keep[:, :4] = False

        def at_kept(tc, x, y):
            return torch.where(keep[:, :, None], tc(x), y)

        with model.saes([other, tc], positions=keep):
            partly = model(tokens)
        both = transcoder_by_hand(other, at_kept, layer=0) + transcoder_by_hand(tc, at_kept)
        torch.testing.assert_close(partly, model.run_with_hooks(tokens, fwd_hooks=both), rtol=0, atol=0)
    assert no_hooks_attached(model)


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
def test_transcoder_error_term_gives_the_clean_run_and_caches_under_the_output_hook(model, tokens, skip):
    tc = random_transcoder(skip)
    clean_cache = model.run_with_cache(tokens, [MLP_IN, MLP_OUT]).cache
    x, y = clean_cache[MLP_IN], clean_cache[MLP_OUT]
    with torch.no_grad():
        clean = model(tokens)
        torch.testing.assert_close(model.run_with_saes(tokens, [tc], use_error_term=True), clean, **ROUNDING)
    out, cache = model.run_with_cache(tokens, lambda n: "hook_sae" in n, saes=[tc], use_error_term=True)
    torch.testing.assert_close(out, clean, **ROUNDING)
    got = {name.removeprefix(f"{MLP_OUT}.hook_sae_"): t for name, t in cache.items()}
    assert sorted(got) == sorted(["input", "acts_pre", "acts_post", "recons", "error", "output"])
    assert torch.equal(got["input"], x)  # the MLP input, under the output hook's name
    f = got["acts_post"]
    assert torch.equal(f, tc.encode(x)) and 0 < (f > 0).float().mean() < 1
    assert torch.equal(got["recons"], tc(x))  # decoder plus skip term: the transcoder's whole output
    assert torch.equal(got["error"], y - got["recons"])
    torch.testing.assert_close(got["output"], y, rtol=0, atol=1e-6)

    # an edit of the latents through the error term equals steering the transcoder's latent
    latent = int((f > 0).sum((0, 1)).argmax())

    def ablate(f_BQF, hook):
        f_BQF = f_BQF.clone()
        f_BQF[..., latent] = 0
        return f_BQF

    def ablated(tc, x, y):  # y' = y - f[latent] W_dec[latent], f read on the MLP input
        return y - tc.encode(x)[..., latent, None] * tc.W_dec[latent]

    with torch.no_grad():
        edited = model.run_with_saes(
            tokens, [tc], use_error_term=True, fwd_hooks=[(f"{MLP_OUT}.hook_sae_acts_post", ablate)]
        )
        with model.steer([(tc, latent, 0.0)]):
            steered = model(tokens)
        by_hand = model.run_with_hooks(tokens, fwd_hooks=transcoder_by_hand(tc, ablated))
    torch.testing.assert_close(edited, steered, **ROUNDING)
    torch.testing.assert_close(steered, by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, clean, atol=1e-2)
    kwargs = dict(max_new_tokens=6, stop_at_eos=False)
    steered_gen = model.generate(["ab", "a longer prompt"], steer=[(tc, latent, ("add", 30.0))], **kwargs)

    def added(tc, x, y):
        return y + 30.0 * tc.W_dec[latent]

    with model.hooks(fwd_hooks=transcoder_by_hand(tc, added)):
        by_hand_gen = model.generate(["ab", "a longer prompt"], **kwargs)
    assert steered_gen.new_tokens == by_hand_gen.new_tokens
    assert no_hooks_attached(model)


def test_a_transcoder_reads_what_an_sae_spliced_at_its_input_gives(model, tokens):
    tc = random_transcoder(skip=True)
    sae_in = random_sae(MLP_IN, seed=7)

    with torch.no_grad():
        spliced = model.run_with_saes(tokens, [tc, sae_in])
        fwd = [(MLP_IN, lambda act, hook: sae_in(act)), *transcoder_by_hand(tc)]
        assert torch.equal(spliced, model.run_with_hooks(tokens, fwd_hooks=fwd))


def test_transcoder_bad_input_is_refused(model, tokens):
    tc = random_transcoder(skip=False)
    with pytest.raises(ValueError, match=r"a transcoder reads an MLP's input, blocks\.L\.hook_mlp_in"):
        model.run_with_saes(tokens, [("blocks.1.hook_resid_post", tc)])
    with pytest.raises(ValueError, match=rf"{MLP_IN} gives .*width 32.*the SAE reads 16 \(cfg.d_in\)"):
        model.run_with_saes(tokens, [random_transcoder(skip=True, d_in=16)])
    with pytest.raises(
        ValueError, match=rf"{MLP_OUT} gives .*width 32.*the transcoder writes 16 \(cfg.d_out\)"
    ):
        model.run_with_saes(tokens, [random_transcoder(skip=False, d_out=16)])
    with pytest.raises(ValueError, match=rf"{MLP_OUT} gives .*the transcoder writes 16"):
        model.generate("ab", 3, steer=[(random_transcoder(skip=False, d_out=16), 0, 1.0)])
    with pytest.raises(
        ValueError, match=r"the transcoder reads 'blocks\.9\.hook_mlp_in', which is not a hook"
    ):
        model.run_with_saes(tokens, [random_transcoder(skip=False, layer=9)])
    with pytest.raises(
        ValueError, match=rf"two SAEs or transcoders write '{MLP_OUT}'; splice one SAE per hook"
    ):
        model.run_with_saes(tokens, [tc, random_sae(MLP_OUT)])
    with pytest.raises(ValueError, match=r"valid latents are \[0, 48\)"):
        model.generate("ab", 3, steer=[(tc, 48, 1.0)])
    assert no_hooks_attached(model)
