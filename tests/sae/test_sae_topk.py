"""BatchTopK / Matryoshka training SAEs: hand-written gradients against autograd and SAELens, the running
threshold, the inference fold, training on synthetic data, and argument checks."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE as LensBatchTopK
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE as LensMatryoshka,
)
from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from g2interp.sae import JumpReLUSAE, SAEConfig
from g2interp.sae.topk import BatchTopKTrainingSAE, batch_topk_pairs
from g2interp.sae.training import StepInput

D_IN, D_SAE, K = 16, 64, 4
WIDTHS = (8, 24, D_SAE)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second OpenMP thread only costs wake-ups (tens of times slower on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sae(**kw) -> BatchTopKTrainingSAE:
    kw = {"k": K, "aux_k_coefficient": 0.5, "k_aux": 6, **kw}
    sae = BatchTopKTrainingSAE(D_IN, D_SAE, **kw).double()
    sae.normalise_decoder()  # unit norm in float64 too (SAELens ranks by pre·‖W_dec‖)
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
        if sae.W_skip is not None:
            sae.W_skip.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(3))
    return sae


def _batch(n: int = 48, d: int = D_IN, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_loss(sae: BatchTopKTrainingSAE, x, y, dead_F):
    """The loss written plainly, as SAELens computes it (flat top-k of the ReLU'd batch, AuxK)."""
    pre = x @ sae.W_enc + sae.b_enc
    flat = pre.relu().flatten()
    top = flat.topk(int(sae.k * x.shape[0]))
    acts = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
    base = sae.b_dec + (x @ sae.W_skip.T if sae.W_skip is not None else 0.0)
    loss = pre.new_zeros(())
    for width in sae.widths:
        recon = base + acts[:, :width] @ sae.W_dec[:width]
        mse = (recon - y).pow(2).sum(-1).mean()
        loss = loss + mse
    n_dead = int(dead_F.sum())
    if n_dead:
        chosen = torch.where(dead_F, pre, -torch.inf).topk(min(sae.k_aux, n_dead), dim=-1)
        aux_acts = torch.zeros_like(pre).scatter(-1, chosen.indices, chosen.values)
        aux = ((aux_acts @ sae.W_dec - (y - recon).detach()).pow(2).sum(-1).mean()) * min(
            n_dead / sae.k_aux, 1
        )
        loss = loss + sae.aux_k_coefficient * aux
    return loss, mse


def _projected(grad_FO: torch.Tensor, W_FO: torch.Tensor) -> torch.Tensor:
    return grad_FO - (grad_FO * W_FO).sum(-1, keepdim=True) * W_FO


def _grads(sae: BatchTopKTrainingSAE, inp: StepInput):
    for p in sae.parameters():
        p.grad = None
    stats = sae.loss_and_grads(inp)
    return stats, {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize(
    "kind", ["plain", "matryoshka", "skip_transcoder", "matryoshka_transcoder", "few_dead"]
)
@pytest.mark.parametrize("sparse_below", [0.0, 1.0])
def test_grads_equal_autograd_reference(kind, sparse_below):
    d_out = 12 if "transcoder" in kind else None
    widths = WIDTHS if "matryoshka" in kind else ()
    sae = _sae(d_out=d_out, affine_skip=kind == "skip_transcoder", matryoshka_widths=widths)
    x = _batch()
    y = x if d_out is None else _batch(d=d_out, seed=5)
    dead_F = torch.zeros(D_SAE, dtype=torch.bool)
    dead_F[[3, 40]] = True  # fewer than k_aux: every token's AuxK uses both
    if kind != "few_dead":
        dead_F[::3] = True  # more than k_aux: each token's top 6
    stats, grads = _grads(sae, StepInput(x, y, 0.0, dead_F, sparse_below))
    assert stats.sparse == (sparse_below > 0)
    for p in sae.parameters():  # the reference reads the same parameters
        p.grad = None
    loss, mse = _reference_loss(sae, x, y, dead_F)
    loss.backward()
    assert stats.loss == pytest.approx(float(loss.detach()), rel=1e-10)
    assert stats.mse == pytest.approx(float(mse.detach()), rel=1e-10)
    assert stats.l0 == int(K * x.shape[0]) / x.shape[0]
    assert stats.fired_F.sum() == int(K * x.shape[0]) and stats.fired_F.dtype == torch.int64
    sq_total = float((y - y.mean(0)).pow(2).sum())
    assert stats.fvu == pytest.approx(float(mse.detach()) * x.shape[0] / sq_total, rel=1e-10)
    for name, p in sae.named_parameters():
        expected = _projected(p.grad, p.detach()) if name == "W_dec" else p.grad
        torch.testing.assert_close(grads[name], expected, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("widths", [(), (64, 128, 512)])
def test_sparse_equals_dense_in_float32(widths):
    """At a size where the cut-off is estimated from sampled rows (every 6th of 384), with a fractional k."""
    sae = BatchTopKTrainingSAE(64, 512, k=6.5, matryoshka_widths=widths, k_aux=16)
    x = torch.randn(384, 64, generator=torch.Generator().manual_seed(4)) + 2.0
    sae.init_from_data(None, None, x, x)
    dead_F = torch.zeros(512, dtype=torch.bool)
    dead_F[::7] = True
    threshold = float(sae.topk_threshold)
    dense, g_dense = _grads(sae, StepInput(x, x, 0.0, dead_F, 0.0))
    sae.topk_threshold.fill_(threshold)
    sparse, g_sparse = _grads(sae, StepInput(x, x, 0.0, dead_F, 0.03))
    assert sparse.sparse and not dense.sparse
    assert sparse.l0 == int(6.5 * 384) / 384
    assert sparse.loss == pytest.approx(dense.loss, rel=1e-5) and sparse.fvu == pytest.approx(
        dense.fvu, rel=1e-5
    )
    assert torch.equal(sparse.fired_F, dense.fired_F)
    for name, grad in g_dense.items():
        torch.testing.assert_close(g_sparse[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("matryoshka", [False, True])
def test_loss_grads_and_threshold_equal_saelens(matryoshka):
    x = _batch(64) * 2.0
    dead_F = torch.zeros(D_SAE, dtype=torch.bool)
    dead_F[::4] = True
    common = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "k": K,
        "aux_loss_coefficient": 0.25,
        "apply_b_dec_to_input": False,  # our encoder reads x itself (centred through b_enc)
        "decoder_init_norm": None,
        "dtype": "float64",
    }
    if matryoshka:
        lens = LensMatryoshka(MatryoshkaBatchTopKTrainingSAEConfig(matryoshka_widths=list(WIDTHS), **common))
    else:
        lens = LensBatchTopK(BatchTopKTrainingSAEConfig(**common))
    ours = _sae(aux_k_coefficient=0.25, k_aux=None, matryoshka_widths=WIDTHS if matryoshka else ())
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(lens, name).copy_(getattr(ours, name))
    for step in range(3):  # the running threshold over a few batches
        xb = x + 0.1 * step
        out = lens.training_forward_pass(
            TrainStepInput(
                sae_in=xb,
                coefficients={},
                dead_neuron_mask=dead_F,
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        lens.zero_grad()
        out.loss.backward()
        stats, grads = _grads(ours, StepInput(xb, xb, 0.0, dead_F, 1.0))
        assert stats.loss == pytest.approx(float(out.loss.detach()), rel=1e-10)
        assert stats.mse == pytest.approx(float(out.losses["mse_loss"].detach()), rel=1e-10)
        assert stats.l0 == pytest.approx(float((out.feature_acts > 0).sum(-1).double().mean()))
        assert float(ours.topk_threshold) == pytest.approx(float(lens.topk_threshold), rel=1e-12)
        for name, p in lens.named_parameters():
            expected = _projected(p.grad, p.detach()) if name == "W_dec" else p.grad
            torch.testing.assert_close(grads[name], expected, rtol=1e-9, atol=1e-11, msg=name)
    assert float(ours.topk_threshold) > 0


def test_threshold_checkpointed_in_state_dict():
    sae = _sae()
    sae.loss_and_grads(StepInput(_batch(), _batch(), 0.0, torch.zeros(D_SAE, dtype=torch.bool), 1.0))
    state = sae.state_dict()
    assert state["topk_threshold"].dtype == torch.float64 and float(state["topk_threshold"]) > 0
    fresh = BatchTopKTrainingSAE(D_IN, D_SAE, k=K, seed=7).double()
    fresh.load_state_dict(state)
    assert float(fresh.topk_threshold) == float(sae.topk_threshold)
    assert set(dict(sae.named_parameters())) == {"W_enc", "b_enc", "W_dec", "b_dec"}


@pytest.mark.parametrize("transcoder", [False, True])
def test_inference_tensors_reproduce_training_latents(transcoder):
    s_in, s_out = (0.5, 0.5) if not transcoder else (0.5, 3.0)
    d_out = 12 if transcoder else D_IN
    sae = _sae(d_out=d_out if transcoder else None, affine_skip=transcoder)
    x_raw = _batch(64) * 2.0
    xs = x_raw * s_in
    pre = sae.pre_activations(xs).detach()
    pairs = batch_topk_pairs(pre, sae.n_keep(64))
    acts_train = torch.zeros_like(pre)
    acts_train[pairs.rows_N, pairs.cols_N] = pairs.acts_N
    recon_train = (acts_train @ sae.W_dec + sae.base(xs)).detach()
    cfg = (
        SAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            d_out=d_out,
            hook_name_out="blocks.0.hook_mlp_out",
            affine_skip=True,
            dtype="float64",
        )
        if transcoder
        else SAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float64")
    )
    # 1. Threshold between the batch's smallest kept and largest dropped activation: the same latents.
    dropped = pre.flatten().topk(sae.n_keep(64) + 1).values[-1]
    sae.topk_threshold.fill_(0.5 * (float(pairs.acts_N.min()) + float(dropped)))
    inference = JumpReLUSAE.from_tensors(sae.inference_tensors(s_in, s_out), cfg)
    with torch.no_grad():
        torch.testing.assert_close(inference.encode(x_raw), acts_train / s_out)
        torch.testing.assert_close(inference(x_raw), recon_train / s_out)
    # 2. A running threshold below the batch's cut-off: kept latents agree; more may fire.
    sae.topk_threshold.fill_(0.5 * float(pairs.acts_N.min()))
    inference = JumpReLUSAE.from_tensors(sae.inference_tensors(s_in, s_out), cfg)
    with torch.no_grad():
        acts_inf = inference.encode(x_raw)
    kept = acts_train > 0
    torch.testing.assert_close(acts_inf[kept], acts_train[kept] / s_out)
    assert (acts_inf[~kept & (pre <= 0.5 * float(pairs.acts_N.min()))] == 0).all()
    assert torch.allclose(inference.W_dec.norm(dim=-1), torch.ones(D_SAE, dtype=torch.float64))


def _synthetic(n: int, token_seed: int = 1, d_in: int = 32, n_features: int = 48, offset: float = 10.0):
    """Sparse sums of fixed unit directions with Zipf-like frequencies (~3 a token) and a large constant
    offset; ``token_seed`` draws the tokens (the directions are always the same)."""
    dirs = torch.randn(n_features, d_in, generator=torch.Generator().manual_seed(0))
    dirs /= dirs.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(token_seed)
    freq = 1.0 / torch.arange(1, n_features + 1) ** 0.7
    p = (3.0 * freq / freq.sum()).clamp(max=1.0)
    mags = (torch.rand(n, n_features, generator=g) < p) * (0.5 + torch.rand(n, n_features, generator=g))
    x = mags @ dirs
    x[:, 0] += offset
    return x


def _train(data, *, widths=(), steps=400, lr=1e-2, k=3, batch=256):
    sae = BatchTopKTrainingSAE(data.shape[1], 64, k=k, matryoshka_widths=widths, aux_k_coefficient=1 / 32)
    batches = data.view(-1, batch, data.shape[1])
    sae.init_from_data(None, None, batches[0], batches[0])
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    last_fired = torch.zeros(64, dtype=torch.long)
    stats = []
    for i in range(steps):
        x = batches[i % len(batches)]
        st = sae.loss_and_grads(StepInput(x, x, 0.0, (i - last_fired) > 50, 0.5))
        last_fired[st.fired_F > 0] = i
        opt.step()
        sae.after_step()
        stats.append(st)
    return sae, stats


def _prefix_fvu(sae, x, width):
    with torch.no_grad():
        pre = sae.pre_activations(x)
        acts = pre * (pre > sae.threshold)
        recon = acts[:, :width] @ sae.W_dec[:width] + sae.b_dec
        return float((recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_adam_training_reaches_low_fvu_and_l0_k():
    data = _synthetic(256 * 100)
    sae, stats = _train(data)
    assert stats[0].sparse
    assert stats[0].fvu < 1.0  # the data-dependent start already beats the mean
    assert stats[-1].fvu < 0.2 and stats[-1].fvu < 0.3 * stats[0].fvu
    assert stats[-1].l0 == 3.0
    held_out = _synthetic(4096, token_seed=99)
    with torch.no_grad():
        pre = sae.pre_activations(held_out)
        l0 = float((pre > sae.threshold).sum(-1).double().mean())
    assert 2.4 < l0 < 3.6  # the running threshold gives the inference SAE about k latents a token
    assert _prefix_fvu(sae, held_out, 64) < 0.2
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)


def test_matryoshka_prefixes_reconstruct_better_than_plain():
    data = _synthetic(256 * 100)
    plain, _ = _train(data, steps=300)
    nested, _ = _train(data, widths=(8, 16, 64), steps=300)
    held_out = _synthetic(4096, token_seed=99)
    for width in (8, 16):
        assert _prefix_fvu(nested, held_out, width) < 0.8 * _prefix_fvu(plain, held_out, width)
    assert _prefix_fvu(nested, held_out, 64) < 0.3


def test_auxk_moves_dead_latents_only_through_aux():
    x = _batch(48)
    dead_F = torch.zeros(D_SAE, dtype=torch.bool)
    dead_F[::2] = True
    for sparse_below in (0.0, 1.0):
        with_aux = _sae(aux_k_coefficient=0.5, k_aux=4)
        no_aux = _sae(aux_k_coefficient=0.0, k_aux=4)
        pairs = batch_topk_pairs(with_aux.pre_activations(x).detach(), with_aux.n_keep(48))
        idle_F = torch.ones(D_SAE, dtype=torch.bool)
        idle_F[pairs.cols_N] = False  # kept on no token of this batch
        _, g_aux = _grads(with_aux, StepInput(x, x, 0.0, dead_F, sparse_below))
        _, g_none = _grads(no_aux, StepInput(x, x, 0.0, dead_F, sparse_below))
        dead_idle, live_idle = dead_F & idle_F, ~dead_F & idle_F
        assert dead_idle.any() and live_idle.any()
        assert (g_none["W_dec"][dead_idle] == 0).all() and (g_none["W_enc"][:, dead_idle] == 0).all()
        assert (g_aux["W_dec"][dead_idle].norm(dim=-1) > 0).all()
        assert (g_aux["W_enc"][:, dead_idle].norm(dim=0) > 0).all()
        assert (g_aux["b_enc"][dead_idle] != 0).all()
        assert (g_aux["W_dec"][live_idle] == 0).all() and (g_aux["b_enc"][live_idle] == 0).all()


def test_batch_topk_pairs_equal_flat_topk_and_fall_back():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(300, 50, generator=g)
    for n_keep in (300, 2000, 9000):
        pairs = batch_topk_pairs(pre, n_keep)
        flat = pre.relu().flatten()
        top = flat.topk(n_keep)
        expected = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
        got = torch.zeros_like(pre)
        got[pairs.rows_N, pairs.cols_N] = pairs.acts_N
        assert torch.equal(got, expected)
        order = pairs.rows_N * 50 + pairs.cols_N
        assert (order[1:] > order[:-1]).all()  # row-major
    # Every 2nd row, the sampled ones (every 4th) among them, holds large values: the cut-off passes
    # too few of the batch, so it falls back to all positive values.
    skewed = pre.clone()
    skewed[::2] += 5.0
    pairs = batch_topk_pairs(skewed, 9000)
    assert pairs.acts_N.numel() == 9000
    assert float(pairs.acts_N.min()) >= float(skewed.flatten().topk(9000).values[-1])


def test_init_from_data_centres_and_starts_threshold():
    data = _synthetic(2048)
    sae = BatchTopKTrainingSAE(32, 64, k=3)
    sae.init_from_data(None, None, data[:1024], data[:1024])
    torch.testing.assert_close(sae.b_dec.detach(), data[:1024].mean(0))
    torch.testing.assert_close(
        sae.b_enc.detach(), -(data[:1024].mean(0) @ sae.W_enc.detach()), atol=1e-5, rtol=1e-5
    )
    assert float(sae.topk_threshold) > 0
    stats = sae.loss_and_grads(
        StepInput(data[1024:], data[1024:], 0.0, torch.zeros(64, dtype=torch.bool), 1.0)
    )
    assert stats.fvu < 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"k must be a number in \[1, d_sae=64\]"),
        ({"k": 65}, r"k must be a number in \[1, d_sae=64\]"),
        ({"k": 4, "matryoshka_widths": (8, 8, 64)}, r"strictly increasing .* got \[8, 8, 64\]"),
        ({"k": 4, "matryoshka_widths": (8, 32)}, r"ending at d_sae=64, got \[8, 32\]"),
        ({"k": 4, "matryoshka_widths": (0, 64)}, r"positive ints .* got \[0, 64\]"),
        ({"k": 4, "matryoshka_widths": (8.0, 64)}, r"ints .* got \[8.0, 64\]"),
        ({"k": 4, "k_aux": 0}, "k_aux must be a positive int"),
        ({"k": 4, "threshold_lr": 0.0}, r"threshold_lr must lie in \(0, 1\]"),
        ({"k": 4, "aux_k_coefficient": -1.0}, "aux_k_coefficient must be >= 0"),
        ({"k": 4, "d_out": -3}, "d_out must be a positive int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchTopKTrainingSAE(D_IN, D_SAE, **kwargs)
