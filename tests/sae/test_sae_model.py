"""JumpReLUSAE: forward by hand, SAELens round trips, Gemma Scope import, malformed files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from g2interp.sae import JumpReLUSAE, SAEConfig, SAEFormatError
from g2interp.sae.constants import SAE_CFG_FILE, SAE_WEIGHTS_FILE


def random_sae(d_in=12, d_sae=40, seed=0, hook_name="blocks.3.hook_resid_post", **cfg_kwargs) -> JumpReLUSAE:
    gen = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=hook_name, model_name="tiny", **cfg_kwargs)
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.8)
    return sae


def load_saelens(folder):
    from sae_lens import SAE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAE.load_from_disk(folder)


def test_forward_matches_hand_computation():
    cfg = SAEConfig(d_in=2, d_sae=3)
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.5, 0.0]))
        sae.threshold.copy_(torch.tensor([0.5, 1.0, 0.25]))
        sae.W_dec.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.0]]))
        sae.b_dec.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[1.0, 0.5], [0.25, 1.0]])
    # pre = x W_enc + b_enc: [1, 1, 0.5] and [0.25, 1.5, -0.75]; kept where pre > threshold
    f = sae.encode(x)
    assert torch.equal(f, torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.5, 0.0]]))
    # x̂ = f W_dec + b_dec: [1 - 0.5 + 0.5, 2 - 0.5] and [0.5, 1.5 - 0.5]
    assert torch.equal(sae(x), torch.tensor([[1.0, 1.5], [0.5, 1.0]]))


def test_input_scale_and_b_dec_flag():
    sae = random_sae(apply_b_dec_to_input=True, input_scale=3.0)
    x = torch.randn(5, 12)
    pre = (x * 3.0 - sae.b_dec) @ sae.W_enc + sae.b_enc
    f_ref = pre * (pre > sae.threshold)
    torch.testing.assert_close(sae.encode(x), f_ref)
    torch.testing.assert_close(sae(x), (f_ref @ sae.W_dec + sae.b_dec) / 3.0)
    before = sae(x)
    sae.fold_input_scale()
    assert sae.cfg.input_scale == 1.0
    torch.testing.assert_close(sae(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_save_loads_in_saelens_with_identical_outputs(tmp_path, apply_b_dec):
    sae = random_sae(apply_b_dec_to_input=apply_b_dec, input_scale=2.5, metadata={"l0_coefficient": 1e-3})
    x = torch.randn(64, 12) * 4
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["normalize_activations"] == "none"
    assert (
        cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
        and cfg["metadata"]["l0_coefficient"] == 1e-3
    )

    theirs = load_saelens(tmp_path)
    assert type(theirs).__name__ == "JumpReLUSAE"
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "tiny"
    ours = JumpReLUSAE.load(tmp_path)
    assert ours.cfg.input_scale == 1.0 and ours.cfg.apply_b_dec_to_input == apply_b_dec
    with torch.no_grad():
        assert torch.equal(ours.encode(x), theirs.encode(x))
        assert torch.equal(ours(x), theirs(x))
        # the unfolded original agrees up to the rounding of the fold
        torch.testing.assert_close(sae(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_loads_saelens_saved_folder(tmp_path):
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE as SLJumpReLU
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    theirs = SLJumpReLU(
        JumpReLUSAEConfig(d_in=6, d_sae=10, metadata=SAEMetadata(hook_name="blocks.0.hook_mlp_out"))
    )
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape) - 0.3)
    theirs.save_model(tmp_path)
    ours = JumpReLUSAE.load(tmp_path)
    assert ours.cfg.hook_name == "blocks.0.hook_mlp_out" and ours.cfg.apply_b_dec_to_input
    x = torch.randn(20, 6)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_hook_z_round_trip(tmp_path):
    sae = random_sae(d_in=8, d_sae=16, hook_name="blocks.1.attn.hook_z", reshape_hook_z=True)
    x = torch.randn(3, 5, 2, 4)  # [B, Q, n_heads, d_head]
    sae.save(tmp_path)
    theirs = load_saelens(tmp_path)
    ours = JumpReLUSAE.load(tmp_path)
    assert ours.cfg.reshape_hook_z and ours(x).shape == x.shape
    with torch.no_grad():
        assert ours.encode(x).count_nonzero() > 0
        assert torch.equal(ours(x), theirs(x))
        assert torch.equal(ours(x), sae(x))


def test_load_rejects_other_architecture_and_bad_tensors(tmp_path):
    sae = random_sae()
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps({**cfg, "architecture": "topk"}))
    with pytest.raises(SAEFormatError, match="'topk'"):
        JumpReLUSAE.load(tmp_path)
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps(cfg))

    weights = load_file(tmp_path / SAE_WEIGHTS_FILE)
    save_file({**weights, "b_enc": torch.zeros(41)}, tmp_path / SAE_WEIGHTS_FILE)
    with pytest.raises(SAEFormatError, match=r"b_enc has shape \(41,\), expected \(40,\)"):
        JumpReLUSAE.load(tmp_path)
    save_file({k: v for k, v in weights.items() if k != "threshold"}, tmp_path / SAE_WEIGHTS_FILE)
    with pytest.raises(SAEFormatError, match="threshold"):
        JumpReLUSAE.load(tmp_path)


# ---------------------------------------------------------------- Gemma Scope params.npz
def gemma_scope_arrays(d_in=10, d_sae=24, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_enc": rng.normal(size=d_sae).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=d_in).astype(np.float32),
        "threshold": rng.uniform(0, 1, size=d_sae).astype(np.float32),
    }


def test_gemma_scope_import_matches_numpy_reference(tmp_path):
    arrays = gemma_scope_arrays()
    np.savez(tmp_path / "params.npz", **arrays)
    sae = JumpReLUSAE.from_gemma_scope(
        tmp_path, hook_name="blocks.12.hook_resid_post", model_name="gemma-2-2b"
    )
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (10, 24) and not sae.cfg.apply_b_dec_to_input
    x = np.random.default_rng(1).normal(size=(32, 10)).astype(np.float32) * 3
    pre = x @ arrays["W_enc"] + arrays["b_enc"]
    acts = pre * (pre > arrays["threshold"])
    recon = acts @ arrays["W_dec"] + arrays["b_dec"]
    with torch.no_grad():
        np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), acts, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), recon, rtol=1e-5, atol=1e-4)
    assert sae.cfg.hook_name == "blocks.12.hook_resid_post"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.pop("threshold"), r"lacks key\(s\) \['threshold'\]"),
        (lambda a: a.update(b_enc=np.zeros(25, np.float32)), r"b_enc has shape \(25,\), expected \(24,\)"),
        (
            lambda a: a.update(W_dec=np.zeros((10, 24), np.float32)),
            r"W_dec has shape \(10, 24\), expected \(24, 10\)",
        ),
        (
            lambda a: a.update(W_dec=np.array([{"evil": 1}] * 3, dtype=object)),
            r"'W_dec' cannot be read without pickle",
        ),
        (lambda a: a.update(b_dec=np.arange(10)), r"'b_dec' has dtype int64"),
        (lambda a: a["threshold"].__setitem__(3, np.nan), r"'threshold' holds NaN"),
    ],
    ids=["missing", "wrong-shape", "transposed", "object-array", "int-array", "nan"],
)
def test_gemma_scope_bad_npz(tmp_path, edit, message):
    arrays = gemma_scope_arrays()
    edit(arrays)
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(SAEFormatError, match=message):
        JumpReLUSAE.from_gemma_scope(tmp_path / "params.npz", hook_name="h", model_name="m")


def test_gemma_scope_not_an_npz(tmp_path):
    (tmp_path / "params.npz").write_bytes(b"not a zip")
    with pytest.raises(SAEFormatError, match="cannot read"):
        JumpReLUSAE.from_gemma_scope(tmp_path, hook_name="h", model_name="m")


def test_config_validation():
    with pytest.raises(ValueError, match="d_sae"):
        SAEConfig(d_in=4, d_sae=0)
    with pytest.raises(ValueError, match="dtype"):
        SAEConfig(d_in=4, d_sae=4, dtype="int8")
    with pytest.raises(ValueError, match="input_scale"):
        SAEConfig(d_in=4, d_sae=4, input_scale=float("nan"))
    with pytest.raises(ValueError, match="JSON"):
        SAEConfig(d_in=4, d_sae=4, metadata={"x": object()})
