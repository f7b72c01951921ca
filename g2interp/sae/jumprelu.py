"""Gemma Scope JumpReLU training: the trainable SAE (or transcoder) and its loss gradients.

Loss per token, on inputs scaled to unit mean squared norm:

    ‖y - ŷ‖² + λ · P(L0) + c · (L_aux + Σ_{f dead} relu(θ_f - sg(pre_f)))

with ``y = x`` for an SAE, ``P(L0) = L0`` (Gemma Scope 1) or ``2/T · (L0 - T)²`` towards a target
``T`` (Gemma Scope 2's quadratic penalty, SAELens's ``quadratic`` mode), and, for latents dead for
``dead_window_steps`` (weight ``c``, 0 by default), the AuxK loss (:mod:`g2interp.sae.auxk`), which
points their encoders and decoders at what the live latents miss, plus a descent of their thresholds
(``sg``: pre-activations held constant) until they fire again. Anthropic's pre-activation loss (the
same term with gradients to ``pre``) revives latents by pulling their encoders towards the mean
input, where they fire densely and cost reconstruction; AuxK alone leaves the thresholds where they
killed the latent (experiments/README.md has both). The thresholds θ are parameters in
their own right, trained through the straight-through estimators of :mod:`g2interp.sae.ste`: Adam
then moves a threshold as fast as it moves ``b_enc``, so they keep up with the encoder (a
log-parametrised threshold moves ``lr · θ`` per step, ~30x slower at θ ~ 0.03).

Two implementations of the same gradients:

* :meth:`JumpReLUTrainingSAE.training_loss` builds an autograd graph through
  :class:`~g2interp.sae.ste.JumpReLU` and :class:`~g2interp.sae.ste.Step` (the reference; SAELens
  computes the same).
* :func:`loss_and_grads` writes the gradients by hand with no graph. Once few latents sit above or near
  their thresholds (typical L0 of tens out of thousands) it decodes and back-propagates through CSR
  sparse products, leaving one dense matmul (the encoder) per step. The trainer uses this one;
  a test checks it against the reference.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from g2interp.sae.auxk import AuxKTerms, DeadColumns, add_auxk_grads, auxk_reference, auxk_terms, dead_columns
from g2interp.sae.sparse import csr, grad_buffer
from g2interp.sae.sparse import offsets as sparse_offsets
from g2interp.sae.ste import jumprelu, step
from g2interp.sae.training import (
    L0_TARGET_SCOPES,
    GradStats,
    SAETrainingConfig,
    StepInput,
    StepStats,
    TrainingForward,
    TrainingLoss,
    fvu_of,
)


class JumpReLUTrainingSAE(nn.Module):
    """Trainable JumpReLU SAE, or transcoder (``d_out``, ``affine_skip``); thresholds trained directly."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l0_coefficient: float,
        bandwidth: float = 0.001,
        threshold_init: float = 0.001,
        target_l0: float = 0.0,
        l0_target_per: str = "token",
        aux_coefficient: float = 0.0,
        k_aux: int | None = None,
        d_out: int | None = None,
        affine_skip: bool = False,
        transcoder: bool = False,
    ):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        if d_in <= 0 or d_sae <= 0 or d_out <= 0:
            raise ValueError(f"d_in, d_sae and d_out must be positive, got {d_in}, {d_sae}, {d_out}")
        if bandwidth <= 0 or threshold_init <= 0 or l0_coefficient < 0 or aux_coefficient < 0:
            raise ValueError(
                "bandwidth and threshold_init must be positive, l0_coefficient and aux_coefficient >= 0"
            )
        if target_l0 != 0 and not 1 <= target_l0 <= d_sae:
            raise ValueError(f"target_l0 must lie in [1, d_sae={d_sae}] (or be 0), got {target_l0!r}")
        self.d_in, self.d_sae, self.d_out = d_in, d_sae, d_out
        self.l0_coefficient = float(l0_coefficient)
        self.bandwidth = float(bandwidth)
        self.target_l0 = float(target_l0)
        if l0_target_per not in L0_TARGET_SCOPES:
            raise ValueError(f"l0_target_per must be one of {L0_TARGET_SCOPES}, got {l0_target_per!r}")
        self.l0_target_per = l0_target_per
        self.aux_coefficient = float(aux_coefficient)
        self.k_aux = d_in // 2 if k_aux is None else int(k_aux)  # SAELens's default
        self.min_threshold = float(threshold_init)
        #: Reconstructs another hook than it reads (its decoder is fitted to the data at the start).
        self.transcoder = transcoder or affine_skip or d_out != d_in
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))  # [D, F]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # [F]
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out))  # [F, O], unit-norm rows
        self.b_dec = nn.Parameter(torch.zeros(d_out))  # [O]
        self.threshold = nn.Parameter(torch.full((d_sae,), float(threshold_init)))  # [F]
        self.W_skip = (
            nn.Parameter(torch.zeros(d_out, d_in)) if affine_skip else None
        )  # [O, D], SAELens layout

    @classmethod
    def initialised(
        cls, cfg: SAETrainingConfig, *, l0_coefficient: float | None = None, seed: int | None = None
    ) -> JumpReLUTrainingSAE:
        """Gemma Scope init: W_dec He-uniform with unit-norm rows, W_enc = W_dec.T (a transcoder of
        another width: its own He-uniform draw), biases and skip 0."""
        sae = cls(
            cfg.d_in,
            cfg.d_sae,
            l0_coefficient=cfg.l0_coefficient if l0_coefficient is None else l0_coefficient,
            bandwidth=cfg.bandwidth,
            threshold_init=cfg.threshold_init,
            target_l0=cfg.target_l0,
            l0_target_per=cfg.l0_target_per,
            aux_coefficient=cfg.aux_coefficient,
            d_out=cfg.d_out,
            affine_skip=cfg.affine_skip,
            transcoder=cfg.is_transcoder,
        )
        generator = torch.Generator().manual_seed(cfg.init_seed if seed is None else seed)
        with torch.no_grad():
            nn.init.kaiming_uniform_(sae.W_dec, generator=generator)
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
            if sae.d_out == sae.d_in:
                sae.W_enc.copy_(sae.W_dec.T)
            else:
                nn.init.kaiming_uniform_(sae.W_enc, generator=generator)
        return sae

    # ------------------------------------------------------------------ reference (autograd)
    def forward(self, x: Float[Tensor, "batch d_in"]) -> TrainingForward:
        """Reconstruction, activations and pre-activations, differentiable through the estimators."""
        pre_BF = x @ self.W_enc + self.b_enc
        acts_BF = jumprelu(pre_BF, self.threshold, self.bandwidth)
        recon_BO = acts_BF @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            recon_BO = recon_BO + x @ self.W_skip.T
        return TrainingForward(recon_BO, acts_BF, pre_BF)

    def training_loss(
        self,
        x: Float[Tensor, "batch d_in"],
        l0_coefficient: float | None = None,
        *,
        y: Float[Tensor, "batch d_out"] | None = None,
        dead_F: Tensor | None = None,
    ) -> TrainingLoss:
        """Reference loss through autograd (``l0_coefficient`` defaults to this SAE's final λ)."""
        coef = self.l0_coefficient if l0_coefficient is None else l0_coefficient
        y = x if y is None else y
        recon_BO, acts_BF, pre_BF = self(x)
        mse = (recon_BO - y).pow(2).sum(-1).mean()
        l0_B = step(pre_BF, self.threshold, self.bandwidth).sum(-1)
        per_batch = self.l0_target_per == "batch" and self.target_l0 > 0
        loss = mse + coef * l0_penalty(l0_B.mean() if per_batch else l0_B, self.target_l0).mean()
        if dead_F is not None and self.aux_coefficient > 0:
            aux = auxk_reference(pre_BF, recon_BO, y, self.W_dec, dead_F, self.k_aux)
            descent = ((self.threshold - pre_BF.detach()).relu() * dead_F).sum(-1).mean()
            loss = loss + self.aux_coefficient * (aux + descent)
        return TrainingLoss(loss, mse, l0_B.mean(), acts_BF, recon_BO)

    # ------------------------------------------------------------------ the trainer's interface
    def loss_and_grads(self, inp: StepInput) -> StepStats:
        """:func:`loss_and_grads`, the decoder gradient projected onto the unit-norm constraint."""
        stats = loss_and_grads(
            self, inp.x_BD, inp.l0_coefficient, inp.sparse_below, y_BD=inp.y_BD, dead_F=inp.dead_F
        )
        self.project_decoder_grad()
        return stats

    @torch.no_grad()
    def after_step(self) -> None:
        """Unit-norm decoder rows; thresholds kept >= 0 (below, the gate would pass negative values;
        projected rather than clamped in the graph, which would pin a threshold at 0 for good)."""
        self.normalise_decoder()
        self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def init_from_data(
        self, mean_x_D: Tensor | None, mean_y_D: Tensor | None, first_x_BD: Tensor, first_y_BD: Tensor
    ) -> None:
        init_from_data(
            self,
            mean_D=mean_x_D,
            mean_out_D=mean_y_D,
            first_batch_BD=first_x_BD,
            first_target_BD=first_y_BD,
            target_l0=self.target_l0,
            min_threshold=self.min_threshold,
            fit_decoder=self.transcoder,
        )

    def inference_tensors(self, input_scale: float, output_scale: float) -> dict[str, Tensor]:
        """Weights reading raw activations: pre-activations ``(x·s_in) W_enc + b_enc`` need ``W_enc·s_in``
        (thresholds and ``b_enc`` unchanged); outputs are divided by ``s_out``."""
        out = {
            "W_enc": self.W_enc.detach() * input_scale,
            "b_enc": self.b_enc.detach().clone(),
            "W_dec": self.W_dec.detach() / output_scale,
            "b_dec": self.b_dec.detach() / output_scale,
            "threshold": self.threshold.detach().clone(),
        }
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip.detach() * (input_scale / output_scale)
        return {name: t.contiguous() for name, t in out.items()}

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each decoder row's gradient its component along that (unit-norm) row."""
        grad_FO = self.W_dec.grad
        if grad_FO is not None:
            parallel_F1 = (grad_FO * self.W_dec).sum(-1, keepdim=True)
            grad_FO.sub_(parallel_F1 * self.W_dec)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))


def l0_penalty(l0_B: Tensor, target_l0: float) -> Tensor:
    """Per-token L0 penalty: ``L0`` (Gemma Scope 1), or ``2/T·(L0 - T)²`` with a target (Gemma Scope 2)."""
    return l0_B if target_l0 <= 0 else (2.0 / target_l0) * (l0_B - target_l0) ** 2


def _l0_weights(l0_B: Tensor, target_l0: float, coef: float, per: str = "token") -> tuple[Tensor, float]:
    """d(λ·mean P(L0)) / d L0_b per token, and the penalty's value (``per="batch"``: P of the batch's
    mean L0, the same weight for every token)."""
    B = l0_B.shape[0]
    l0_B = l0_B.to(torch.float32)
    if target_l0 <= 0:
        return torch.full_like(l0_B, coef / B), coef * float(l0_B.mean())
    if per == "batch":
        diff = float(l0_B.mean()) - target_l0
        return torch.full_like(l0_B, 4.0 * coef * diff / (target_l0 * B)), coef * 2.0 / target_l0 * diff**2
    diff_B = l0_B - target_l0
    return diff_B * (4.0 * coef / (target_l0 * B)), coef * float((2.0 / target_l0) * diff_B.pow(2).mean())


@torch.no_grad()
def init_from_data(
    sae: JumpReLUTrainingSAE,
    *,
    mean_D: Float[Tensor, " d_in"] | None = None,
    first_batch_BD: Float[Tensor, "batch d_in"] | None = None,
    target_l0: float = 0.0,
    min_threshold: float = 1e-3,
    mean_out_D: Float[Tensor, " d_out"] | None = None,
    first_target_BD: Float[Tensor, "batch d_out"] | None = None,
    fit_decoder: bool = False,
) -> None:
    """Data-dependent start from scaled inputs: centring biases and per-latent threshold quantiles.

    ``mean_D``: ``b_enc = -mean · W_enc`` (the encoder then reads centred inputs) and ``b_dec`` = the
    target's mean (``mean_out_D``, default ``mean_D``). ``target_l0`` with ``first_batch_BD``: each
    latent's threshold is set to the pre-activation it exceeds on ``round(target_l0 · B / d_sae)`` (at
    least 1) of the batch's tokens, so the first L0 is about ``target_l0`` and no latent starts dead;
    thresholds stay at or above ``min_threshold``. ``fit_decoder`` (transcoders, whose random decoder
    rows would hurt their target more than help it): each decoder row starts at the unit direction of
    the activation-weighted mean target of the tokens its latent fires on.
    """
    if mean_D is not None:
        mean_out = mean_D if mean_out_D is None else mean_out_D
        sae.b_dec.copy_(mean_out.to(sae.b_dec))
        sae.b_enc.copy_(-(mean_D.to(sae.W_enc) @ sae.W_enc))
    if target_l0 > 0:
        if first_batch_BD is None:
            raise ValueError("target_l0 needs first_batch_BD")
        x_BD = first_batch_BD.to(sae.W_enc)
        y_BO = x_BD if first_target_BD is None else first_target_BD.to(sae.W_enc)
        B = x_BD.shape[0]
        n_fire = min(B - 1, max(1, round(target_l0 * B / sae.d_sae)))
        pre_BF = torch.addmm(sae.b_enc, x_BD, sae.W_enc)
        # Midway between the n_fire-th and (n_fire+1)-th largest pre-activation of each latent, so
        # rounding (of another matmul) does not change who fires.
        top_KF = pre_BF.topk(n_fire + 1, dim=0).values
        thr_F = (0.5 * (top_KF[-2] + top_KF[-1])).clamp(min=min_threshold)
        acts_BF = pre_BF * (pre_BF > thr_F)
        target_BO = y_BO - sae.b_dec
        if sae.W_skip is not None:
            target_BO = target_BO - x_BD @ sae.W_skip.T
        if fit_decoder:
            # each decoder row starts at the activation-weighted mean target of the tokens its latent
            # fires on (the direction it would learn first), unit-norm
            W_FO = acts_BF.T @ target_BO
            sae.W_dec.copy_(W_FO / W_FO.norm(dim=-1, keepdim=True).clamp(min=1e-12))
        # Decoder directions over-shoot: scale the encoder (and with it the thresholds, so the same
        # tokens fire) by the least-squares factor of the first batch's reconstruction.
        recon_BO = acts_BF @ sae.W_dec
        scale = float((recon_BO * target_BO).sum() / (recon_BO * recon_BO).sum().clamp(min=1e-30))
        scale_F = torch.full_like(thr_F, scale if math.isfinite(scale) and scale > 0 else 1.0)
        sae.W_enc.mul_(scale_F)
        sae.b_enc.mul_(scale_F)
        sae.threshold.copy_((thr_F * scale_F).clamp(min=min_threshold))


@torch.no_grad()
def loss_and_grads(
    sae: JumpReLUTrainingSAE,
    x_BD: Float[Tensor, "batch d_in"],
    l0_coefficient: float,
    sparse_below: float = 0.03,
    *,
    y_BD: Float[Tensor, "batch d_out"] | None = None,
    dead_F: Tensor | None = None,
) -> StepStats:
    """Loss of one batch and its gradients written into the parameters' ``.grad`` (no autograd).

    Equal to back-propagating :meth:`JumpReLUTrainingSAE.training_loss` up to float rounding (the
    decoder gradient unprojected).
    """
    y_BD = x_BD if y_BD is None else y_BD
    B = x_BD.shape[0]
    thr_F = sae.threshold.detach()
    pre_BF = torch.addmm(sae.b_enc, x_BD, sae.W_enc)
    # gathered before the dense kernel overwrites pre_BF
    dead = dead_columns(pre_BF, dead_F) if sae.aux_coefficient > 0 else None
    # Pairs the loss can depend on: active (pre > θ) or inside the kernel (|pre - θ| < ε/2); pre ≤ θ - ε
    # is outside both, whatever the rounding of (pre - θ)/ε.
    reach_BF = pre_BF > (thr_F - sae.bandwidth) if sparse_below > 0 else None
    sparse = reach_BF is not None and int(reach_BF.count_nonzero()) < sparse_below * B * sae.d_sae
    kernel = _sparse_grads if sparse else _dense_grads
    stats, penalty, aux = kernel(sae, x_BD, y_BD, pre_BF, reach_BF, thr_F, l0_coefficient, dead)
    c = sae.aux_coefficient
    aux_value = 0.0
    if dead is not None and aux is not None:
        aux_value = c * add_auxk_grads(sae, x_BD, aux, c)
        # AuxK points a dead latent's encoder at what the others miss; its threshold, which AuxK does
        # not reach, descends (c · mean_b relu(θ - pre), pre held constant) until the latent fires again
        gap_BK = thr_F[dead.dead_K] - dead.pre_BK
        aux_value += c * float(gap_BK.clamp(min=0).sum()) / B
        sae.threshold.grad.index_add_(0, dead.dead_K, c * (gap_BK > 0).to(x_BD.dtype).mean(0))
    fvu = fvu_of(stats.mse * B, y_BD)
    return StepStats(stats.mse + penalty + aux_value, stats.mse, stats.l0, fvu, stats.fired_F, stats.sparse)


def _threshold_grad(thr: Tensor, kernel_grad_sum: Tensor, kernel_weight: Tensor, bw: float) -> Tensor:
    """d loss / d θ from Σ_b K·∂L/∂f and Σ_b K·w_b (w_b = d penalty / d L0_b), both estimators combined."""
    return -(thr / bw) * kernel_grad_sum - kernel_weight / bw


def _write_skip_and_b_dec(sae: JumpReLUTrainingSAE, x_BD: Tensor, g_BO: Tensor) -> None:
    torch.sum(g_BO, 0, out=grad_buffer(sae.b_dec))
    if sae.W_skip is not None:
        torch.mm(g_BO.T, x_BD, out=grad_buffer(sae.W_skip))


def _dense_grads(
    sae: JumpReLUTrainingSAE,
    x_BD: Tensor,
    y_BD: Tensor,
    pre_BF: Tensor,
    reach_BF: Tensor | None,
    thr_F: Tensor,
    coef: float,
    dead: DeadColumns | None,
) -> tuple[GradStats, float, AuxKTerms | None]:
    del reach_BF
    B = x_BD.shape[0]
    bw = sae.bandwidth
    active_BF = pre_BF > thr_F
    acts_BF = pre_BF * active_BF
    recon_BO = torch.addmm(sae.b_dec, acts_BF, sae.W_dec)
    if sae.W_skip is not None:
        recon_BO.addmm_(x_BD, sae.W_skip.T)
    err_BO = recon_BO.sub_(y_BD)
    mse = float(torch.dot(err_BO.view(-1), err_BO.view(-1))) / B
    aux = None if dead is None else auxk_terms(dead, err_BO, sae.W_dec, sae.k_aux)
    g_BO = err_BO.mul_(2.0 / B)  # d mse / d ŷ
    _write_skip_and_b_dec(sae, x_BD, g_BO)
    torch.mm(acts_BF.T, g_BO, out=grad_buffer(sae.W_dec))
    del acts_BF
    fired_F = active_BF.sum(0)
    weights_B, penalty = _l0_weights(active_BF.sum(1), sae.target_l0, coef, sae.l0_target_per)
    grad_acts_BF = g_BO @ sae.W_dec.T
    # Kernel K((pre - θ)/ε) = 1[|(pre - θ)/ε| < 1/2], computed in place over pre (no longer needed).
    near_BF = pre_BF.sub_(thr_F).div_(bw).abs_() < 0.5
    kernel_grad_F = (grad_acts_BF * near_BF).sum(0)
    kernel_weight_F = weights_B @ near_BF.to(weights_B.dtype)
    del near_BF
    grad_buffer(sae.threshold).copy_(_threshold_grad(thr_F, kernel_grad_F, kernel_weight_F, bw))
    grad_pre_BF = grad_acts_BF.mul_(active_BF)
    torch.sum(grad_pre_BF, 0, out=grad_buffer(sae.b_enc))
    torch.mm(x_BD.T, grad_pre_BF, out=grad_buffer(sae.W_enc))
    return GradStats(mse, float(fired_F.sum()) / B, fired_F, sparse=False), penalty, aux


def _sparse_grads(
    sae: JumpReLUTrainingSAE,
    x_BD: Tensor,
    y_BD: Tensor,
    pre_BF: Tensor,
    reach_BF: Tensor | None,
    thr_F: Tensor,
    coef: float,
    dead: DeadColumns | None,
) -> tuple[GradStats, float, AuxKTerms | None]:
    assert reach_BF is not None
    B, F = pre_BF.shape
    bw = sae.bandwidth
    rows_N, cols_N = reach_BF.nonzero(as_tuple=True)  # row-major, i.e. CSR order
    del reach_BF
    pre_N = pre_BF[rows_N, cols_N]
    thr_N = thr_F[cols_N]
    active_N = pre_N > thr_N
    u_N = (pre_N - thr_N) / bw
    near_N = (u_N > -0.5) & (u_N < 0.5)
    acts_N = pre_N * active_N
    crow = sparse_offsets(rows_N, B)
    acts_csr = csr(crow, cols_N, acts_N, (B, F))
    recon_BO = (acts_csr @ sae.W_dec).add_(sae.b_dec)
    if sae.W_skip is not None:
        recon_BO.addmm_(x_BD, sae.W_skip.T)
    err_BO = recon_BO.sub_(y_BD)
    mse = float(torch.dot(err_BO.view(-1), err_BO.view(-1))) / B
    aux = None if dead is None else auxk_terms(dead, err_BO, sae.W_dec, sae.k_aux)
    g_BO = err_BO.mul_(2.0 / B)
    _write_skip_and_b_dec(sae, x_BD, g_BO)
    # ∂L/∂f at the stored pairs only: a sampled dense-dense product.
    grad_acts_N = torch.sparse.sampled_addmm(acts_csr, g_BO, sae.W_dec.T, beta=0.0).values()
    grad_pre_N = grad_acts_N * active_N
    l0_B = torch.bincount(rows_N[active_N], minlength=B)
    weights_B, penalty = _l0_weights(l0_B, sae.target_l0, coef, sae.l0_target_per)
    kernel_grad_F = torch.bincount(cols_N, weights=grad_acts_N * near_N, minlength=F)
    kernel_weight_F = torch.bincount(cols_N, weights=weights_B[rows_N] * near_N, minlength=F)
    grad_buffer(sae.threshold).copy_(_threshold_grad(thr_F, kernel_grad_F, kernel_weight_F, bw))
    grad_buffer(sae.b_enc).copy_(torch.bincount(cols_N, weights=grad_pre_N, minlength=F))
    # Transposed (latent-major) CSR with the same pairs, for the two weight gradients.
    order_N = torch.argsort(cols_N, stable=True)
    ccol = sparse_offsets(cols_N[order_N], F)
    rows_T = rows_N[order_N]
    acts_T = csr(ccol, rows_T, acts_N[order_N], (F, B))
    grad_buffer(sae.W_dec).copy_(acts_T @ g_BO)
    grad_pre_T = csr(ccol, rows_T, grad_pre_N[order_N], (F, B))
    grad_buffer(sae.W_enc).copy_((grad_pre_T @ x_BD).T)
    fired_F = torch.bincount(cols_N[active_N], minlength=F)
    return GradStats(mse, float(active_N.sum()) / B, fired_F, sparse=True), penalty, aux
