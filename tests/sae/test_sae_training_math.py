"""Straight-through estimators by hand, the hand-written gradients against autograd, schedules, config."""

from __future__ import annotations

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


def _sae(threshold: float, seed: int = 0) -> JumpReLUTrainingSAE:
    cfg = SAETrainingConfig(d_in=24, d_sae=96, total_tokens=128, batch_size=128, init_seed=seed)
    sae = JumpReLUTrainingSAE.initialised(cfg)
    sae.bandwidth = 0.05
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.log_threshold.copy_(torch.log(threshold * (0.5 + torch.rand(96, generator=gen))))
        sae.b_enc.copy_(torch.randn(96, generator=gen) * 0.02)
        sae.b_dec.copy_(torch.randn(24, generator=gen) * 0.02)
    return sae


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("threshold", [0.01, 0.3])
def test_hand_written_gradients_equal_autograd(sparse, threshold):
    sae = _sae(threshold)
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(3)) / math.sqrt(24)
    ref = sae.training_loss(x, 0.02)
    ref.loss.backward()
    expected = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    stats = loss_and_grads(sae, x, 0.02, sparse_below=1.0 if sparse else 0.0)
    assert stats.sparse == sparse
    assert stats.loss == pytest.approx(ref.loss.item(), rel=1e-5)
    assert stats.l0 == pytest.approx(ref.l0.item())
    assert int(stats.fired_F.sum()) == int((ref.acts > 0).sum())
    for name, p in sae.named_parameters():
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-7, msg=name)


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
