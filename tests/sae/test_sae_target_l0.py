"""Data-dependent initialisation and the L0 controller: start at the target, stay near it, resume exactly."""

from __future__ import annotations

import math

import pytest
import torch

from g2interp.sae import JumpReLUSAE, JumpReLUTrainingSAE, SAETrainer, SAETrainingConfig
from g2interp.sae.training import L0Steer, init_from_data, steer_l0_coefficient


def cfg(**overrides) -> SAETrainingConfig:
    base = dict(
        d_in=16,
        d_sae=128,
        batch_size=256,
        total_tokens=256 * 60,
        lr=3e-3,
        lr_warmup_steps=5,
        l0_coefficient=1e-3,
        target_l0=8.0,
        l0_controller_rate=0.05,
        b_dec_init="mean",
        n_norm_batches=2,
        dead_window_steps=20,
        checkpoint_every=10,
        log_every=10,
    )
    return SAETrainingConfig(**{**base, **overrides})


def sparse_data(n_batches: int, batch: int = 256, d_in: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Sparse non-negative codes over 64 random directions, on top of a large constant offset."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(64, d_in, generator=gen)
    offset = torch.zeros(d_in)
    offset[2] = 300.0  # most of the norm in one near-constant dimension, as in Gemma's residual stream
    out = []
    for _ in range(n_batches):
        codes = torch.rand(batch, 64, generator=gen) * (torch.rand(batch, 64, generator=gen) < 0.08)
        out.append(codes @ dirs * 20 + offset)
    return out


def test_init_from_data_centres_and_sets_quantile_thresholds():
    c = cfg()
    sae = JumpReLUTrainingSAE.initialised(c)
    x = sparse_data(1)[0] / 300.0
    mean = x.mean(0)
    init_from_data(sae, mean_D=mean, first_batch_BD=x, target_l0=8.0, min_threshold=1e-6)
    assert torch.equal(sae.b_dec.data, mean)
    with torch.no_grad():
        pre = x @ sae.W_enc + sae.b_enc
        torch.testing.assert_close(pre.mean(0), torch.zeros(128), atol=1e-5, rtol=0)  # centred
        fires = (pre > sae.threshold).sum(0)
        recon = (pre * (pre > sae.threshold)) @ sae.W_dec + sae.b_dec
        # the encoder scale is the least-squares one: scaling the codes further cannot help
        err = x - recon
        assert float(((recon - sae.b_dec) * err).sum()) == pytest.approx(0.0, abs=1e-4)
    assert fires.tolist() == [round(8.0 * 256 / 128)] * 128  # every latent at its share, none dead
    with pytest.raises(ValueError, match="needs first_batch_BD"):
        init_from_data(sae, target_l0=8.0)


def test_steer_moves_lambda_towards_the_target_and_holds_while_l0_approaches():
    c = cfg(l0_controller_rate=0.01)
    start = L0Steer(1e-3, math.nan)
    assert steer_l0_coefficient(c, start, 8.0) == L0Steer(1e-3, math.log(8.0))
    assert steer_l0_coefficient(c, start, 16.0).coefficient == pytest.approx(1e-3 * 2**0.01)  # dense: λ up
    assert steer_l0_coefficient(c, start, 4.0).coefficient == pytest.approx(1e-3 * 2**-0.01)
    assert steer_l0_coefficient(c, start, 1e6).coefficient == pytest.approx(1e-3 * math.exp(0.01))  # clipped
    # L0 = 16 is too dense, but falling from 32 (its running mean): λ is held, the mean follows
    falling = steer_l0_coefficient(c, L0Steer(1e-3, math.log(32.0)), 16.0)
    assert falling.coefficient == 1e-3
    assert falling.log_l0_ema == pytest.approx(0.9 * math.log(32.0) + 0.1 * math.log(16.0))
    rising = steer_l0_coefficient(c, L0Steer(1e-3, math.log(12.0)), 16.0)
    assert rising.coefficient == pytest.approx(1e-3 * 2**0.01)


def test_training_holds_l0_near_target_and_records_lambda(tmp_path):
    c = cfg(total_tokens=256 * 120, l0_controller_rate=0.1)
    seen = []
    trainer = SAETrainer(
        c,
        None,
        sparse_data(120),
        callbacks=[lambda t, m: seen.append(m)],
        checkpoint_dir=tmp_path,
        progress=False,
    )
    sae = trainer.fit()[0]
    assert abs(seen[0].saes[0].l0 - 8.0) < 2.0  # starts at the target
    # L0 rises while the encoder learns (thresholds move slowly), then λ brings it back: within 2x
    late = sum(m.saes[0].l0 for m in seen[-20:]) / 20
    assert 4.0 < late < 16.0 and late < max(m.saes[0].l0 for m in seen) - 2
    assert seen[-1].saes[0].fvu < 0.3
    assert seen[0].saes[0].l0_coefficient == 1e-3  # no warm-up: λ starts where configured
    assert len({m.saes[0].l0_coefficient for m in seen}) > 1
    saved = JumpReLUSAE.load(tmp_path / "sae_0").cfg.metadata
    assert saved["target_l0"] == 8.0 and saved["l0_coefficient_start"] == 1e-3
    assert saved["l0_coefficient"] == pytest.approx(trainer.l0_steer[0].coefficient)
    assert sae.cfg.input_scale == 1.0


def test_resume_restores_the_controller_bitwise(tmp_path):
    class Stop(Exception):
        pass

    def stop_at_15(trainer, metrics):
        if metrics.step == 15:
            raise Stop

    c = cfg(total_tokens=256 * 30)
    data = sparse_data(30)
    reference = SAETrainer(c, None, data, progress=False).fit()[0]
    with pytest.raises(Stop):
        SAETrainer(c, None, data, callbacks=[stop_at_15], checkpoint_dir=tmp_path, progress=False).fit()
    resumed = SAETrainer(c, None, data, checkpoint_dir=tmp_path, progress=False).fit()[0]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(reference, name), getattr(resumed, name)), name


def test_threshold_lr_scale_speeds_up_the_thresholds_only():
    data = sparse_data(1)
    moved = {}
    for scale in (1.0, 5.0):
        c = cfg(total_tokens=256, n_norm_batches=1, lr_warmup_steps=0, threshold_lr_scale=scale)
        trainer = SAETrainer(c, None, data, progress=False)
        trainer.fit()
        sae = trainer.saes[0]
        start = JumpReLUTrainingSAE.initialised(c)
        init_from_data(
            start,
            mean_D=(data[0] * trainer.input_scale).double().mean(0).float(),
            first_batch_BD=data[0] * trainer.input_scale,
            target_l0=c.target_l0,
            min_threshold=c.threshold_init,
        )
        moved[scale] = (sae.log_threshold - start.log_threshold, sae.W_enc - start.W_enc)
    d_thr1, d_enc1 = moved[1.0]
    d_thr5, d_enc5 = moved[5.0]
    assert d_thr1.abs().max() > 0
    # first Adam step: lr·g/(|g| + eps), so five times the learning rate moves five times as far; each
    # difference of two fp32 log-thresholds is exact only to a few ulps of their size
    ulp = torch.finfo(torch.float32).eps * float(sae.log_threshold.abs().max())
    torch.testing.assert_close(d_thr5, 5 * d_thr1, rtol=1e-4, atol=8 * ulp)
    torch.testing.assert_close(d_enc5, d_enc1, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(target_l0=-1.0), "target_l0 must lie in"),
        (dict(target_l0=500.0), "target_l0 must lie in"),
        (dict(l0_controller_rate=0.0), "l0_controller_rate must be positive"),
        (dict(l0_coefficient=0.0), "l0_coefficient \\(its start\\) must be > 0"),
        (dict(b_dec_init="median"), "b_dec_init must be one of"),
        (dict(threshold_lr_scale=0.0), "threshold_lr_scale must be positive"),
    ],
)
def test_new_config_fields_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kwargs)
