"""Target L0 (Gemma Scope 2's quadratic penalty, thresholds trained directly) and the dead-latent loss:
start at the target, land on it, keep latents alive, resume exactly."""

from __future__ import annotations

import pytest
import torch

from g2interp.sae import JumpReLUSAE, JumpReLUTrainingSAE, SAETrainer, SAETrainingConfig
from g2interp.sae.jumprelu import init_from_data


def cfg(**overrides) -> SAETrainingConfig:
    base = dict(
        d_in=16,
        d_sae=128,
        batch_size=256,
        total_tokens=256 * 60,
        lr=3e-3,
        lr_warmup_steps=5,
        l0_coefficient=1e-2,
        l0_warmup_steps=0,
        target_l0=8.0,
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


def test_training_lands_on_the_target_l0(tmp_path):
    c = cfg(total_tokens=256 * 120)
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
    late = sum(m.saes[0].l0 for m in seen[-20:]) / 20
    assert abs(late - 8.0) < 0.8, late  # and ends within 10 %
    assert seen[-1].saes[0].fvu < 0.3
    held_out = sparse_data(4, seed=1)
    l0 = sum(float((sae.encode(x) > 0).sum(-1).float().mean()) for x in held_out) / 4
    assert abs(l0 - 8.0) < 1.0, l0  # the inference SAE (scales folded) too, on other tokens
    saved = JumpReLUSAE.load(tmp_path / "sae_0").cfg.metadata
    assert (
        saved["target_l0"] == 8.0 and saved["l0_coefficient"] == 1e-2 and saved["architecture"] == "jumprelu"
    )
    assert sae.cfg.input_scale == 1.0


def test_a_sparser_target_lands_too():
    seen = []
    c = cfg(total_tokens=256 * 120, target_l0=3.0, l0_coefficient=3e-2)
    SAETrainer(c, None, sparse_data(120), callbacks=[lambda t, m: seen.append(m)], progress=False).fit()
    late = sum(m.saes[0].l0 for m in seen[-20:]) / 20
    assert abs(late - 3.0) < 0.3, late


def test_dead_latent_loss_revives_latents():
    """Latents pushed far below their thresholds stay dead without the auxiliary loss, and fire again
    with it."""
    dead_at_end = {}
    for aux in (0.0, 1 / 32):
        c = cfg(total_tokens=256 * 80, aux_coefficient=aux, dead_window_steps=5)
        trainer = SAETrainer(c, None, sparse_data(80), progress=False)
        killed = torch.arange(0, 128, 4)

        def kill(t, m, killed=killed):
            if m.step == 2:  # after the data-dependent start: a quarter of the latents pushed far off
                with torch.no_grad():
                    t.saes[0].b_enc[killed] -= 0.25

        trainer.callbacks.append(kill)
        trainer.fit()
        dead_at_end[aux] = int((trainer.steps_since_fired[0][killed] >= 5).sum())
    assert dead_at_end[0.0] == 32 and dead_at_end[1 / 32] < 8, dead_at_end


def test_resume_is_bitwise_equal_with_target_and_aux(tmp_path):
    class Stop(Exception):
        pass

    def stop_at_15(trainer, metrics):
        if metrics.step == 15:
            raise Stop

    c = cfg(total_tokens=256 * 30, aux_coefficient=1 / 32, dead_window_steps=3)
    data = sparse_data(30)
    reference = SAETrainer(c, None, data, progress=False).fit()[0]
    with pytest.raises(Stop):
        SAETrainer(c, None, data, callbacks=[stop_at_15], checkpoint_dir=tmp_path, progress=False).fit()
    resumed = SAETrainer(c, None, data, checkpoint_dir=tmp_path, progress=False).fit()[0]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(reference, name), getattr(resumed, name)), name


def test_thresholds_stay_non_negative():
    sae = JumpReLUTrainingSAE.initialised(cfg())
    with torch.no_grad():
        sae.threshold.fill_(-0.5)
    sae.after_step()
    assert float(sae.threshold.detach().min()) == 0.0


def test_a_batch_target_lands_and_leaves_tokens_their_own_l0():
    """``l0_target_per="batch"`` pulls the mean L0 to the target, not every token's: the spread of
    per-token L0 stays wider than under the per-token penalty."""
    held_out = torch.cat(sparse_data(2, seed=1))
    spread = {}
    for per in ("token", "batch"):
        seen = []
        c = cfg(total_tokens=256 * 120, l0_target_per=per, l0_coefficient=3e-2)
        sae = SAETrainer(
            c, None, sparse_data(120), callbacks=[lambda t, m, seen=seen: seen.append(m)], progress=False
        ).fit()[0]
        late = sum(m.saes[0].l0 for m in seen[-20:]) / 20
        assert abs(late - 8.0) < 0.8, (per, late)
        spread[per] = float((sae.encode(held_out) > 0).sum(-1).float().std())
    assert spread["batch"] > 1.2 * spread["token"], spread


def test_a_transcoders_decoder_is_fitted_to_the_first_batch():
    """Random decoder rows would hurt a transcoder's target: its start fits them (ridge least squares),
    keeps them unit-norm and keeps which tokens fire."""
    c = cfg(hook_name="blocks.1.hook_mlp_in", hook_name_out="blocks.1.hook_mlp_out", d_out=12)
    x = sparse_data(1)[0] / 300.0
    y = torch.relu(x @ torch.randn(16, 12, generator=torch.Generator().manual_seed(5)))
    errors, fired = {}, {}
    for fit in (False, True):
        sae = JumpReLUTrainingSAE.initialised(c)
        init_from_data(sae, mean_D=x.mean(0), mean_out_D=y.mean(0), first_batch_BD=x, first_target_BD=y,
                       target_l0=8.0, min_threshold=1e-6, fit_decoder=fit)  # fmt: skip
        with torch.no_grad():
            pre = x @ sae.W_enc + sae.b_enc
            acts = pre * (pre > sae.threshold)
            errors[fit] = float(((acts @ sae.W_dec + sae.b_dec - y) ** 2).sum())
            fired[fit] = acts > 0
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128))
    assert torch.equal(fired[True], fired[False])
    total = float(((y - y.mean(0)) ** 2).sum())
    assert errors[True] < 0.5 * total < errors[False], (errors, total)
    assert (
        JumpReLUTrainingSAE.initialised(c).transcoder
        and not JumpReLUTrainingSAE.initialised(cfg()).transcoder
    )
