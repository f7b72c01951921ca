"""Straight-through estimators by hand, the hand-written gradients against autograd, schedules, config."""

from __future__ import annotations

import json
import math

import pytest
import torch

from g2interp.sae import JumpReLU, JumpReLUTrainingSAE, SAETrainingConfig, Step, learning_rate, loss_and_grads
from g2interp.sae.training import l0_coefficient_at

# Two tokens, three latents; bandwidth 0.5, thresholds (1, 1, 2).
# (pre - θ)/ε = [[0.4, -0.2, 1.0], [-0.6, 0.0, 0.2]]: inside the kernel (|u| < 1/2) except 1.0 and -0.6.
PRE = torch.tensor([[1.2, 0.9, 2.5], [0.7, 1.0, 2.1]], dtype=torch.float64)
THRESHOLD = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
BANDWIDTH = 0.5
KERNEL = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)


def test_jumprelu_forward_and_estimator_by_hand():
    pre = PRE.clone().requires_grad_()
    threshold = THRESHOLD.clone().requires_grad_()
    out = JumpReLU.apply(pre, threshold, BANDWIDTH)
    # kept where pre > θ (the pre == θ entry is dropped)
    assert torch.equal(out, torch.tensor([[1.2, 0.0, 2.5], [0.0, 0.0, 2.1]], dtype=torch.float64))
    grad_out = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    out.backward(grad_out)
    assert torch.equal(pre.grad, torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]], dtype=torch.float64))
    # ∂/∂θ = -Σ_b (θ/ε)·K·g: latent 0: -(1/0.5)·1; latent 1: -(1/0.5)·(2 + 5); latent 2: -(2/0.5)·6
    assert torch.allclose(threshold.grad, torch.tensor([-2.0, -14.0, -24.0], dtype=torch.float64))


def test_step_forward_and_estimator_by_hand():
    pre = PRE.clone().requires_grad_()
    threshold = THRESHOLD.clone().requires_grad_()
    out = Step.apply(pre, threshold, BANDWIDTH)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    out.sum().backward()
    assert pre.grad is None or not pre.grad.any()  # the L0 penalty does not move the encoder
    # ∂/∂θ = -Σ_b (1/ε)·K: kernel counts per latent are (1, 2, 1)
    assert torch.allclose(threshold.grad, torch.tensor([-2.0, -4.0, -2.0], dtype=torch.float64))


def test_estimators_match_saelens():
    from sae_lens.saes.jumprelu_sae import JumpReLU as SLJumpReLU
    from sae_lens.saes.jumprelu_sae import Step as SLStep

    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 16, generator=gen) * 0.01
    thr = torch.rand(16, generator=gen) * 0.01
    g = torch.randn(64, 16, generator=gen)
    for ours, theirs in ((JumpReLU, SLJumpReLU), (Step, SLStep)):
        grads = []
        for fn, extra in ((ours, ()), (theirs, (False,))):
            p, t = pre.clone().requires_grad_(), thr.clone().requires_grad_()
            fn.apply(p, t, 0.003, *extra).backward(g)
            grads.append((p.grad, t.grad))
        assert torch.equal(grads[0][1], grads[1][1])
        if grads[1][0] is not None:
            assert torch.equal(grads[0][0], grads[1][0])


def _sae(threshold: float, seed: int = 0, **cfg_kwargs) -> JumpReLUTrainingSAE:
    cfg = SAETrainingConfig(d_in=24, d_sae=96, total_tokens=128, batch_size=128, init_seed=seed, **cfg_kwargs)
    sae = JumpReLUTrainingSAE.initialised(cfg)
    sae.bandwidth = 0.05
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.threshold.copy_(threshold * (0.5 + torch.rand(96, generator=gen)))
        sae.b_enc.copy_(torch.randn(96, generator=gen) * 0.02)
        sae.b_dec.copy_(torch.randn(sae.d_out, generator=gen) * 0.02)
        if sae.W_skip is not None:
            sae.W_skip.copy_(torch.randn(sae.d_out, 24, generator=gen) * 0.1)
    return sae


#: Gemma Scope 1 (linear L0), Gemma Scope 2 (quadratic L0 towards 8), the dead-latent loss, and a
#: transcoder of another width with an affine skip.
OBJECTIVES = {
    "linear": {},
    "quadratic": {"target_l0": 8.0},
    "quadratic-per-batch": {"target_l0": 8.0, "l0_target_per": "batch"},
    "quadratic+aux": {"target_l0": 8.0, "aux_coefficient": 0.1},
    "transcoder+skip+aux": {
        "target_l0": 8.0,
        "aux_coefficient": 0.1,
        "hook_name": "blocks.1.hook_mlp_in",
        "hook_name_out": "blocks.1.hook_mlp_out",
        "d_out": 16,
        "affine_skip": True,
    },
}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("threshold", [0.01, 0.3])
def test_hand_written_gradients_equal_autograd(sparse, threshold, objective):
    sae = _sae(threshold, **OBJECTIVES[objective])
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(128, 24, generator=gen) / math.sqrt(24)
    y = torch.randn(128, sae.d_out, generator=gen) / 4 if sae.d_out != 24 else None
    dead = torch.rand(96, generator=gen) < 0.3
    ref = sae.training_loss(x, 0.02, y=y, dead_F=dead)
    ref.loss.backward()
    expected = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    stats = loss_and_grads(sae, x, 0.02, sparse_below=1.0 if sparse else 0.0, y_BD=y, dead_F=dead)
    assert stats.sparse == sparse
    assert stats.loss == pytest.approx(ref.loss.item(), rel=1e-5)
    assert stats.l0 == pytest.approx(ref.l0.item())
    assert int(stats.fired_F.sum()) == int((ref.acts > 0).sum())
    for name, p in sae.named_parameters():
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-7, msg=name)


def test_quadratic_penalty_pulls_thresholds_towards_the_target_from_both_sides():
    """Tokens above the target push the thresholds up, tokens below pull them down (λ·2/T·(L0-T)²)."""
    for threshold, target, sign in ((0.01, 8.0, -1.0), (0.3, 30.0, 1.0)):  # denser: raise θ; sparser: lower
        sae = _sae(threshold, target_l0=target)
        x = torch.randn(128, 24, generator=torch.Generator().manual_seed(3)) / math.sqrt(24)
        stats = loss_and_grads(sae, x, 1.0, 0.0)  # λ large: the penalty dominates the threshold gradient
        assert (stats.l0 - target) * sign < 0
        moved = -sae.threshold.grad  # gradient descent's direction
        assert float(moved.sum()) * sign < 0


def test_auxk_loss_moves_only_the_dead_latents():
    """AuxK and the threshold descent reach the dead latents' parameters, nothing else."""
    sae = _sae(0.3, aux_coefficient=1.0)
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(3)) / math.sqrt(24)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[:10] = True
    with_aux = loss_and_grads(sae, x, 0.0, 0.0, dead_F=dead)
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    without = loss_and_grads(sae, x, 0.0, 0.0)
    assert with_aux.loss > without.loss and with_aux.mse == without.mse
    delta = {n: grads[n] - p.grad for n, p in sae.named_parameters()}
    assert delta["W_enc"][:, :10].abs().amax(0).min() > 0 and not delta["W_enc"][:, 10:].any()
    assert delta["b_enc"][:10].abs().min() > 0 and not delta["b_enc"][10:].any()
    assert delta["W_dec"][:10].abs().amax(1).min() > 0 and not delta["W_dec"][10:].any()
    # the dead latents' thresholds descend (a positive gradient), the others' do not move
    assert (delta["threshold"][:10] >= 0).all() and delta["threshold"][:10].max() > 0
    assert not delta["threshold"][10:].any() and not delta["b_dec"].any()


def test_decoder_gradient_projection_and_renorm():
    sae = _sae(0.01)
    x = torch.randn(128, 24)
    loss_and_grads(sae, x, 0.0, 0.0)
    sae.project_decoder_grad()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert parallel.abs().max() < 1e-6
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalise_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(96))


def test_initialisation_follows_gemma_scope():
    cfg = SAETrainingConfig(d_in=16, d_sae=64, total_tokens=64, batch_size=64, threshold_init=0.002)
    sae = JumpReLUTrainingSAE.initialised(cfg)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    assert torch.equal(sae.W_enc, sae.W_dec.T) and sae.W_enc.data_ptr() != sae.W_dec.data_ptr()
    assert not sae.b_enc.any() and not sae.b_dec.any()
    torch.testing.assert_close(sae.threshold, torch.full((64,), 0.002))
    assert torch.equal(JumpReLUTrainingSAE.initialised(cfg).W_dec, sae.W_dec)  # seeded


def test_schedules():
    cfg = SAETrainingConfig(
        d_in=4, d_sae=8, batch_size=10, total_tokens=1000, lr=1.0, lr_warmup_steps=10, lr_decay_steps=20
    )
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 5) == pytest.approx(0.55)  # halfway up the cosine
    assert learning_rate(cfg, 10) == 1.0 and learning_rate(cfg, 79) == 1.0
    assert learning_rate(cfg, 80) == pytest.approx(1.0) and learning_rate(cfg, 90) == pytest.approx(0.5)
    assert learning_rate(cfg, 99) == pytest.approx(0.05)
    assert l0_coefficient_at(2.0, 10, 0) == 0.0
    assert l0_coefficient_at(2.0, 10, 5) == 1.0
    assert l0_coefficient_at(2.0, 10, 10) == 2.0 and l0_coefficient_at(2.0, 0, 0) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_sae": 0}, "d_sae"),
        ({"total_tokens": 10}, "less than one batch"),
        ({"lr": -1.0}, "lr"),
        ({"adam_betas": (0.0, 1.0)}, "adam_betas"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"l0_coefficient": float("nan")}, "l0_coefficient"),
        ({"lr_decay_steps": 1000}, "lr_decay_steps"),
        ({"sparse_below": 2.0}, "sparse_below"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"target_l0": 9.0}, r"target_l0 must lie in \[1, d_sae=8\]"),
        ({"target_l0": 0.5}, r"target_l0 must lie in \[1, d_sae=8\]"),
        ({"architecture": "topk"}, "architecture must be one of"),
        ({"architecture": "batchtopk"}, "needs target_l0"),
        ({"architecture": "matryoshka", "target_l0": 2.0, "matryoshka_widths": (4, 2, 8)}, "increasing"),
        ({"architecture": "matryoshka", "target_l0": 2.0, "matryoshka_widths": (2, 4)}, "ending at d_sae=8"),
        ({"matryoshka_widths": (4, 8)}, "for architecture 'matryoshka'"),
        ({"hook_name": "blocks.1.hook_resid_post", "hook_name_out": "blocks.1.hook_mlp_out"}, "hook_mlp_in"),
        ({"affine_skip": True}, "for transcoders"),
        ({"aux_coefficient": -1.0}, "aux_coefficient"),
        ({"l0_target_per": "sequence"}, r"l0_target_per must be one of \('token', 'batch'\)"),
    ],
)
def test_config_validation(kwargs, message):
    base = {"d_in": 4, "d_sae": 8, "batch_size": 16, "total_tokens": 160}
    with pytest.raises(ValueError, match=message):
        SAETrainingConfig(**{**base, **kwargs})


def test_config_round_trips_through_dict():
    cfg = SAETrainingConfig(d_in=4, d_sae=8, batch_size=16, total_tokens=160, adam_betas=(0, 0.99))
    assert cfg.adam_betas == (0.0, 0.99) and isinstance(cfg.adam_betas[0], float)
    assert SAETrainingConfig.from_dict(cfg.to_dict()) == cfg
    matryoshka = SAETrainingConfig(
        d_in=4, d_sae=64, batch_size=16, total_tokens=160, architecture="matryoshka", target_l0=4
    )
    assert matryoshka.matryoshka_widths == (4, 8, 16, 32, 64)  # the default nesting
    assert SAETrainingConfig.from_dict(json.loads(json.dumps(matryoshka.to_dict()))) == matryoshka
