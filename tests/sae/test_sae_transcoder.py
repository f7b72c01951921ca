"""Transcoders in JumpReLUSAE: forward against NumPy (with and without the affine skip, with an input
scale), folding, save / load round trips, SAELens interoperability both ways, config validation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from g2interp.sae import JumpReLUSAE, SAEConfig, SAEFormatError, check_transcoder_hooks
from g2interp.sae.constants import SAE_CFG_FILE, SAE_WEIGHTS_FILE

D_IN, D_SAE, D_OUT = 12, 40, 9
IN, OUT = "blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out"


def random_transcoder(skip: bool, seed: int = 0, d_out: int = D_OUT, **cfg_kwargs) -> JumpReLUSAE:
    cfg = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        d_out=d_out,
        hook_name=IN,
        hook_name_out=OUT,
        affine_skip=skip,
        model_name="tiny",
        **cfg_kwargs,
    )
    sae = JumpReLUSAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        sae.threshold.copy_(torch.rand(D_SAE, generator=gen) * 0.8)
    return sae


def numpy_reference(sae: JumpReLUSAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents and output by hand: inputs times s, outputs of the decoder over s, skip on raw x."""
    w = {name: t.detach().double().numpy() for name, t in sae.named_parameters()}
    s = sae.cfg.input_scale
    pre = (x * s) @ w["W_enc"] + w["b_enc"]
    acts = pre * (pre > w["threshold"])
    out = (acts @ w["W_dec"] + w["b_dec"]) / s
    if sae.cfg.affine_skip:
        out = out + x @ w["W_skip"].T
    return acts, out


def load_saelens(folder):
    from sae_lens import SAE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAE.load_from_disk(folder)


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
@pytest.mark.parametrize("input_scale", [1.0, 2.5])
def test_forward_matches_numpy(skip, input_scale):
    sae = random_transcoder(skip, input_scale=input_scale)
    assert sae.cfg.is_transcoder and sae.W_dec.shape == (D_SAE, D_OUT) and sae.b_dec.shape == (D_OUT,)
    assert (sae.W_skip is not None) == skip and (not skip or sae.W_skip.shape == (D_OUT, D_IN))
    x = np.random.default_rng(1).normal(size=(3, 16, D_IN)) * 2
    acts, out = numpy_reference(sae, x)
    assert 0 < (acts > 0).mean() < 1
    with torch.no_grad():
        xt = torch.from_numpy(x).float()
        np.testing.assert_allclose(sae.encode(xt).numpy(), acts, rtol=1e-5, atol=1e-5)
        got = sae(xt)
        assert got.shape == (3, 16, D_OUT)
        np.testing.assert_allclose(got.numpy(), out, rtol=1e-5, atol=1e-4)
        if skip:
            np.testing.assert_allclose(
                sae.skip(xt).numpy(), x @ sae.W_skip.double().numpy().T, rtol=1e-5, atol=1e-5
            )


def test_hand_computed_skip_transcoder():
    cfg = SAEConfig(d_in=2, d_sae=2, d_out=1, hook_name=IN, hook_name_out=OUT, affine_skip=True)
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        sae.threshold.copy_(torch.tensor([0.5, 0.5]))
        sae.W_dec.copy_(torch.tensor([[2.0], [-1.0]]))
        sae.b_dec.copy_(torch.tensor([0.25]))
        sae.W_skip.copy_(torch.tensor([[1.0, 10.0]]))
    x = torch.tensor([[1.0, 0.25], [0.0, 2.0]])
    # latents [1, 0] and [0, 2]; decoder 2 + 0.25 and -2 + 0.25; skip 1 + 2.5 and 20
    assert torch.equal(sae.encode(x), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert torch.equal(sae(x), torch.tensor([[5.75], [18.25]]))


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
def test_fold_input_scale_keeps_outputs_and_w_skip(skip):
    sae = random_transcoder(skip, input_scale=2.5)
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        before = sae(x)
        W_skip = None if sae.W_skip is None else sae.W_skip.clone()
        W_dec = sae.W_dec.clone()
        sae.fold_input_scale()
        torch.testing.assert_close(sae(x), before, rtol=1e-5, atol=1e-5)
    assert sae.cfg.input_scale == 1.0
    torch.testing.assert_close(sae.W_dec, W_dec / 2.5)
    if skip:  # (x s) W_skip^T / s = x W_skip^T: the skip reads raw activations already
        assert torch.equal(sae.W_skip, W_skip)


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
def test_save_load_and_saelens_load_with_equal_outputs(tmp_path, skip):
    sae = random_transcoder(skip, input_scale=2.5, metadata={"l0": 12.5})
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    assert cfg["architecture"] == ("jumprelu_skip_transcoder" if skip else "jumprelu_transcoder")
    assert cfg["d_out"] == D_OUT and cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == IN and cfg["metadata"]["hook_name_out"] == OUT
    weights = load_file(tmp_path / SAE_WEIGHTS_FILE)
    assert sorted(weights) == sorted(["W_enc", "b_enc", "W_dec", "b_dec", "threshold", *(["W_skip"] * skip)])

    ours = JumpReLUSAE.load(tmp_path)
    assert ours.cfg.input_scale == 1.0 and ours.cfg.metadata["l0"] == 12.5
    assert (ours.cfg.d_out, ours.cfg.hook_name, ours.cfg.hook_name_out, ours.cfg.affine_skip) == (
        D_OUT,
        IN,
        OUT,
        skip,
    )
    theirs = load_saelens(tmp_path)
    assert type(theirs).__name__ == ("JumpReLUSkipTranscoder" if skip else "JumpReLUTranscoder")
    assert theirs.cfg.d_out == D_OUT and theirs.cfg.metadata.hook_name_out == OUT
    x = torch.randn(64, D_IN) * 3
    with torch.no_grad():
        # SAELens's transcoder forward returns the output at the output hook (skip term included)
        assert theirs(x).shape == (64, D_OUT)
        assert torch.equal(ours.encode(x), theirs.encode(x))
        assert torch.equal(ours(x), theirs(x))
        torch.testing.assert_close(sae(x), theirs(x), rtol=1e-5, atol=1e-5)  # up to the fold's rounding
    ours.save(tmp_path / "again")  # a loaded transcoder saves the same files
    for name in (SAE_CFG_FILE, SAE_WEIGHTS_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / name).read_bytes()


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
def test_loads_saelens_saved_transcoder(tmp_path, skip):
    from sae_lens import (
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    cls, cfg_cls = (
        (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig)
        if skip
        else (JumpReLUTranscoder, JumpReLUTranscoderConfig)
    )
    # SAELens keeps no hook_name_out: a transcoder reading blocks.L.hook_mlp_in writes blocks.L.hook_mlp_out
    theirs = cls(
        cfg_cls(
            d_in=6,
            d_sae=10,
            d_out=5,
            apply_b_dec_to_input=False,
            metadata=SAEMetadata(hook_name="blocks.0.hook_mlp_in"),
        )
    )
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape) - 0.3)
    theirs.save_model(tmp_path)
    ours = JumpReLUSAE.load(tmp_path)
    assert ours.cfg.hook_name_out == "blocks.0.hook_mlp_out" and ours.cfg.affine_skip == skip
    x = torch.randn(20, 6)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))

    cfg = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    cfg["metadata"]["hook_name"] = "blocks.0.hook_resid_post"
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="names no hook it writes: set metadata.hook_name_out"):
        JumpReLUSAE.load(tmp_path)


def test_load_refuses_other_architectures_and_mismatched_weights(tmp_path):
    sae = random_transcoder(skip=True)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps({**cfg, "architecture": "skip_transcoder"}))
    with pytest.raises(
        SAEFormatError,
        match=r"'skip_transcoder' SAE; JumpReLUSAE reads the architectures "
        r"\['jumprelu', 'jumprelu_transcoder', 'jumprelu_skip_transcoder'\]",
    ):
        JumpReLUSAE.load(tmp_path)
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_out"}))
    with pytest.raises(SAEFormatError, match="lacks required key 'd_out'"):
        JumpReLUSAE.load(tmp_path)
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps({**cfg, "architecture": "jumprelu_transcoder"}))
    with pytest.raises(
        SAEFormatError, match=r"unexpected tensors \['W_skip'\] \(W_skip belongs to a transcoder"
    ):
        JumpReLUSAE.load(tmp_path)
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps(cfg))
    weights = load_file(tmp_path / SAE_WEIGHTS_FILE)
    save_file({**weights, "W_skip": weights["W_skip"].T.contiguous()}, tmp_path / SAE_WEIGHTS_FILE)
    with pytest.raises(
        SAEFormatError, match=r"W_skip has shape \(12, 9\), expected \(9, 12\) \(d_out, d_in\)"
    ):
        JumpReLUSAE.load(tmp_path)
    save_file({k: v for k, v in weights.items() if k != "W_skip"}, tmp_path / SAE_WEIGHTS_FILE)
    with pytest.raises(SAEFormatError, match=r"lacks \['W_skip'\]"):
        JumpReLUSAE.load(tmp_path)


def test_from_tensors_takes_w_skip_exactly_with_affine_skip():
    skip, plain = random_transcoder(skip=True), random_transcoder(skip=False)
    tensors = {k: v.clone() for k, v in skip.folded_weights().items()}
    again = JumpReLUSAE.from_tensors(tensors, skip.cfg)
    assert torch.equal(again.W_skip, skip.W_skip)
    with pytest.raises(SAEFormatError, match="unexpected tensors"):
        JumpReLUSAE.from_tensors(tensors, plain.cfg)
    with pytest.raises(
        SAEFormatError, match=r"W_dec has shape \(40, 9\), expected \(40, 12\) \(d_sae, d_out\)"
    ):
        JumpReLUSAE.from_tensors(tensors, SAEConfig(**{**_fields(skip.cfg), "d_out": D_IN}))


def _fields(cfg: SAEConfig) -> dict:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def test_an_sae_is_unchanged_by_the_new_fields(tmp_path):
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    assert cfg.d_out == D_IN and not cfg.is_transcoder and cfg.hook_name_out == ""
    assert SAEConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_IN) == SAEConfig(d_in=D_IN, d_sae=D_SAE)
    sae = JumpReLUSAE(cfg)
    assert sae.W_skip is None and "W_skip" not in dict(sae.named_parameters())
    sae.save(tmp_path)
    saved = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    assert saved["architecture"] == "jumprelu" and "d_out" not in saved
    assert "hook_name_out" not in saved["metadata"]
    with pytest.raises(ValueError, match="no skip connection"):
        sae.skip(torch.zeros(1, D_IN))


def test_config_validation():
    with pytest.raises(ValueError, match=r"d_out=9, d_in=12 describes a transcoder: set hook_name_out"):
        SAEConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, hook_name=IN)
    with pytest.raises(ValueError, match="affine_skip=True .* set hook_name_out"):
        SAEConfig(d_in=D_IN, d_sae=D_SAE, affine_skip=True)
    with pytest.raises(ValueError, match="d_out must be a non-negative integer"):
        SAEConfig(d_in=D_IN, d_sae=D_SAE, d_out=-1)
    with pytest.raises(ValueError, match="apply_b_dec_to_input must be False"):
        SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name=IN, hook_name_out=OUT, apply_b_dec_to_input=True)
    with pytest.raises(ValueError, match="reshape_hook_z must be False"):
        SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name_out=OUT, reshape_hook_z=True)
    with pytest.raises(
        ValueError,
        match=r"reads an MLP's input, blocks\.L\.hook_mlp_in .*got hook_name='blocks\.3\.hook_resid_post'",
    ):
        SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name="blocks.3.hook_resid_post", hook_name_out=OUT)
    with pytest.raises(
        ValueError, match=r"writes the same layer's MLP output 'blocks\.3\.hook_mlp_out'; got hook_name_out="
    ):
        SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name=IN, hook_name_out="blocks.4.hook_mlp_out")
    # a transcoder's hook may be left empty (spliced as (hook_name, transcoder)); SAEs read any hook
    assert SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name_out=OUT).is_transcoder
    check_transcoder_hooks("blocks.11.hook_mlp_in", "blocks.11.hook_mlp_out")
    with pytest.raises(ValueError, match="hook_mlp_in"):
        check_transcoder_hooks("blocks.11.hook_mlp_out", "blocks.11.hook_mlp_out")
