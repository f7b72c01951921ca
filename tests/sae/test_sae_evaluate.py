"""evaluate_sae against a hand computation; delta_lm_loss on a tiny random Gemma 3."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from g2interp import HookedGemma, ModelConfig
from g2interp.sae import JumpReLUSAE, SAEConfig, delta_lm_loss, evaluate_sae
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE


def hand_sae() -> JumpReLUSAE:
    """Latents 0, 1 copy x0, x1; latent 2 reads x0 + x1 and decodes to nothing; latent 3 never fires."""
    sae = JumpReLUSAE(SAEConfig(d_in=2, d_sae=4, hook_name="blocks.0.hook_resid_post"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]))
        sae.threshold.copy_(torch.tensor([0.5, 0.5, 1.5, 100.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
    return sae


def test_evaluate_matches_hand_computation(tmp_path):
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.25, 0.5]])
    # active latents per row: {0}, {1, 2}, {0, 1, 2}, {} -> L0 = 6/4; only row 3 is missed: error 0.25² + 0.5²
    result = evaluate_sae(hand_sae(), [x[:3], x[3:]], dense_threshold=0.4)
    x64 = x.double().numpy()
    total_var = ((x64 - x64.mean(0)) ** 2).sum()
    assert result.n_tokens == 4
    assert result.l0 == 1.5
    assert result.mse == pytest.approx(0.3125 / 8)
    assert result.fvu == pytest.approx(0.3125 / total_var)
    assert result.variance_explained == pytest.approx(1 - 0.3125 / total_var)
    assert result.dead_fraction == 0.25  # latent 3
    assert result.dense_fraction == 0.75  # latents 0, 1, 2 fire on half the tokens
    np.testing.assert_allclose(result.feature_density.numpy(), [0.5, 0.5, 0.5, 0.0])
    assert sum(result.density_hist_counts) == 3
    assert result.density_hist_counts[-2] == 3  # log10(0.5) = -0.30 falls in [-0.4, -0.2]
    path = result.save(tmp_path)
    assert path.name == EVAL_RESULTS_FILE
    saved = json.loads(path.read_text())
    assert saved["l0"] == 1.5 and "feature_density" not in saved


def test_evaluate_is_batching_invariant():
    gen = torch.Generator().manual_seed(0)
    sae = JumpReLUSAE(SAEConfig(d_in=6, d_sae=20))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5)
    x = torch.randn(3, 10, 6, generator=gen)  # leading dims are flattened
    whole = evaluate_sae(sae, [x])
    pieces = evaluate_sae(sae, [x[0], x[1:]])
    assert whole.l0 == pieces.l0 and whole.dead_fraction == pieces.dead_fraction
    assert whole.fvu == pytest.approx(pieces.fvu, rel=1e-6)  # float32 SAE matmuls round per batch shape
    assert evaluate_sae(sae, [x[0], x[1:]], max_batches=1).n_tokens == 10


def tiny_model() -> HookedGemma:
    cfg = ModelConfig(
        architecture="gemma3_text",
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        d_head=16,
        d_mlp=64,
        layer_types=("sliding_attention", "full_attention"),
        sliding_window=8,
        query_pre_attn_scalar=16,
        rope_theta_global=1e6,
        rope_theta_local=1e4,
        use_qk_norm=True,
    )
    model = HookedGemma(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        model.embed_tokens.weight.normal_(std=1.0)  # logits that vary from token to token
    return model.eval()


def identity_sae(d: int, hook_name: str, **kwargs) -> JumpReLUSAE:
    """x = relu(x) - relu(-x): an exact reconstruction with 2d latents and zero thresholds."""
    sae = JumpReLUSAE(SAEConfig(d_in=d, d_sae=2 * d, hook_name=hook_name, **kwargs))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def manual_ce(logits, tokens, mask):
    logp = nnf.log_softmax(logits[:, :-1].double(), -1)
    nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    valid = mask[:, 1:] & mask[:, :-1]
    return (nll[valid].sum() / valid.sum()).item()


def test_delta_lm_loss_on_tiny_model(tmp_path):
    model = tiny_model()
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(3, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = model.cfg.bos_token_id
    mask = torch.ones_like(tokens)
    mask[2, 9:] = 0  # right padding

    exact = delta_lm_loss(model, identity_sae(32, hook), tokens, attention_mask=mask)
    assert exact.ce_sae == exact.ce_clean and exact.delta_loss == 0.0 and exact.fraction_recovered == 1.0
    assert exact.n_tokens == 2 * 11 + 8

    zero = JumpReLUSAE(SAEConfig(d_in=32, d_sae=4, hook_name=hook))  # reconstructs everything as 0
    result = delta_lm_loss(model, zero, tokens, attention_mask=mask)
    assert result.ce_sae == pytest.approx(
        result.ce_zero, abs=1e-12
    ) and result.fraction_recovered == pytest.approx(0.0)
    assert result.ce_zero != result.ce_clean  # (a random model need not do better than ablation)

    # by hand: zero everywhere but at BOS (kept clean), with the mask
    def zero_but_bos(act, hook):
        return torch.where((tokens != model.cfg.bos_token_id)[..., None], torch.zeros_like(act), act)

    with torch.no_grad():
        ce_clean = manual_ce(model(tokens, attention_mask=mask), tokens, mask.bool())
        ce_zero = manual_ce(
            model.run_with_hooks(tokens, fwd_hooks=[(hook, zero_but_bos)], attention_mask=mask),
            tokens,
            mask.bool(),
        )
    assert result.ce_clean == pytest.approx(ce_clean, rel=1e-12)
    assert result.ce_zero == pytest.approx(ce_zero, rel=1e-12)
    # splicing BOS too changes the answer
    assert delta_lm_loss(model, zero, tokens, attention_mask=mask, splice_bos=True).ce_zero != pytest.approx(
        ce_zero
    )

    path = result.save(tmp_path)
    assert path.name == DELTA_LOSS_RESULTS_FILE
    assert json.loads(path.read_text())["hook_name"] == hook


def test_delta_lm_loss_hook_z():
    model = tiny_model()
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2))
    sae = identity_sae(32, "blocks.1.attn.hook_z", reshape_hook_z=True)  # [B, Q, 2 heads, 16] -> 32
    result = delta_lm_loss(model, sae, tokens)
    assert result.delta_loss == 0.0 and result.ce_zero != result.ce_clean
    with pytest.raises(ValueError, match="reads 16"):
        delta_lm_loss(model, identity_sae(16, "blocks.1.attn.hook_z"), tokens)
