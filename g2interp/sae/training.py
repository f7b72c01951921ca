"""Gemma Scope JumpReLU training: config, the trainable SAE, and its loss gradients.

Loss per token: ``‖x - x̂‖² + λ · ‖f(x)‖₀`` on inputs scaled to unit mean squared norm, with the
threshold trained through the straight-through estimators of :mod:`g2interp.sae.ste`.

Two implementations of the same gradients:

* :meth:`JumpReLUTrainingSAE.training_loss` builds an autograd graph through :class:`~g2interp.sae.ste.JumpReLU`
  and :class:`~g2interp.sae.ste.Step` (the reference; SAELens computes the same).
* :func:`loss_and_grads` writes the gradients by hand with no graph. Once few latents sit above or near
  their thresholds (typical L0 of tens out of thousands) it decodes and back-propagates through CSR
  sparse products, leaving one dense matmul (the encoder) per step. The trainer uses this one;
  a test checks it against the reference.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from g2interp.cli_config import require_ints, require_positive
from g2interp.sae.sae import WEIGHT_SHAPES, JumpReLUSAE, SAEConfig
from g2interp.sae.ste import jumprelu, step

#: Values of :attr:`SAETrainingConfig.b_dec_init`.
B_DEC_INITS = ("zeros", "mean")


@dataclass(frozen=True)
class SAETrainingConfig:
    """Settings of one training run (shared by every SAE of a sweep); defaults follow Gemma Scope."""

    d_in: int
    """Width of the activations."""
    d_sae: int
    """Number of latents."""
    total_tokens: int
    """Tokens to train on; the run lasts ``total_tokens // batch_size`` steps."""
    batch_size: int = 4096
    """Tokens per step (every batch must have exactly this many rows)."""
    lr: float = 7e-5
    """Peak Adam learning rate."""
    adam_betas: tuple[float, float] = (0.0, 0.999)
    """Adam (beta1, beta2); Gemma Scope uses no first-moment momentum."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    lr_warmup_steps: int = 1000
    """Steps of cosine warm-up of the learning rate from ``lr_warmup_start * lr`` to ``lr``."""
    lr_warmup_start: float = 0.1
    """Learning-rate multiplier at step 0 of the warm-up."""
    lr_decay_steps: int = 0
    """Final steps over which the learning rate decays linearly to 0 (0: no decay)."""
    l0_coefficient: float = 6e-4
    """Weight λ of the L0 penalty (Gemma Scope: 6e-4 gives L0 ≈ 50 on Gemma 2 9B layer 20); a sweep
    gives each SAE its own (see :func:`make_saes`)."""
    l0_warmup_steps: int = 10_000
    """Steps over which λ rises linearly from 0 (λ·min(1, step/warm-up), as SAELens)."""
    bandwidth: float = 0.001
    """Width ε of the rectangle kernel of the straight-through estimators (on unit-norm inputs)."""
    threshold_init: float = 0.001
    """Initial JumpReLU threshold of every latent."""
    init_seed: int = 0
    """Seed of the weight initialisation (every SAE of a sweep starts from the same weights)."""
    n_norm_batches: int = 8
    """Leading batches averaged to estimate the input scale (they are trained on as well)."""
    dead_window_steps: int = 1000
    """A latent that fired on no token in this many steps is dead; firing densities are also
    accumulated over windows of this many steps."""
    checkpoint_every: int = 1000
    """Steps between checkpoints when the trainer has a checkpoint folder (0: none but the last)."""
    keep_checkpoints: int = 1
    """Checkpoints kept on disk (older ones are deleted once a newer one is complete)."""
    log_every: int = 100
    """Steps between metric log lines (logging module and the JSONL log)."""
    sparse_below: float = 0.03
    """Use sparse decode kernels when the fraction of (token, latent) pairs at or within one bandwidth
    below threshold is under this (0: always dense)."""
    target_l0: float = 0.0
    """When > 0: the initial thresholds make each latent fire on ``target_l0 / d_sae`` of the first
    batch's tokens, and λ is steered to hold L0 there (:func:`steer_l0_coefficient`, starting from
    ``l0_coefficient``; ``l0_warmup_steps`` is then unused). 0: Gemma Scope's fixed λ after warm-up."""
    l0_controller_rate: float = 0.02
    """Gain of the λ controller: per step ``log λ += rate · log(L0 / target_l0)`` (the log clipped to ±1)."""
    threshold_lr_scale: float = 1.0
    """Learning rate of the log-thresholds relative to ``lr`` (Gemma Scope: 1). Adam moves a
    log-threshold by about ``lr`` per step, i.e. a threshold θ by ``lr·θ``, while it moves ``b_enc``
    by ``lr``: with θ ~ 0.03 the thresholds trail the encoder ~30-fold, which short runs cannot wait
    out (L0 swings far from where λ would hold it)."""
    b_dec_init: str = "zeros"
    """``"zeros"`` (Gemma Scope) or ``"mean"``: ``b_dec`` starts at the mean of the input-scale batches
    and ``b_enc`` at ``-mean · W_enc``, so the encoder starts on centred inputs (short runs need it:
    a few residual dimensions carry most of the norm as an almost constant offset)."""
    reshape_hook_z: bool = False
    """The hook gives ``[..., n_heads, d_head]`` (``attn.hook_z``) and batches hold it flattened; the
    saved SAEs then read either shape (SAELens's ``reshape_activations="hook_z"``)."""
    hook_name: str = ""
    """Hook the activations come from (recorded in the saved SAEs)."""
    model_name: str = ""
    """Model the activations come from (recorded in the saved SAEs)."""

    def __post_init__(self) -> None:
        require_ints(
            self, "d_in", "d_sae", "total_tokens", "batch_size", "n_norm_batches", "dead_window_steps"
        )
        require_ints(self, "log_every", "keep_checkpoints")
        require_ints(
            self, "lr_warmup_steps", "lr_decay_steps", "l0_warmup_steps", "checkpoint_every", minimum=0
        )
        require_ints(self, "init_seed", minimum=0)
        if self.total_tokens < self.batch_size:
            raise ValueError(f"total_tokens ({self.total_tokens}) is less than one batch ({self.batch_size})")
        if self.lr_decay_steps > self.total_steps:
            raise ValueError(
                f"lr_decay_steps ({self.lr_decay_steps}) exceeds the run's {self.total_steps} steps"
            )
        require_positive(
            self, "lr", "adam_eps", "bandwidth", "threshold_init", "l0_controller_rate", "threshold_lr_scale"
        )
        require_positive(self, "l0_coefficient", allow_zero=True)
        if not 0 < self.lr_warmup_start <= 1:
            raise ValueError(f"lr_warmup_start must lie in (0, 1], got {self.lr_warmup_start!r}")
        betas = tuple(float(b) for b in self.adam_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        object.__setattr__(self, "adam_betas", betas)  # Adam wants floats (not a float and an int)
        if not 0 <= self.sparse_below <= 1:
            raise ValueError(f"sparse_below must lie in [0, 1], got {self.sparse_below!r}")
        if not math.isfinite(self.target_l0) or not 0 <= self.target_l0 <= self.d_sae:
            raise ValueError(f"target_l0 must lie in [0, d_sae={self.d_sae}], got {self.target_l0!r}")
        if self.target_l0 > 0 and self.l0_coefficient <= 0:
            raise ValueError("target_l0 steers λ multiplicatively: l0_coefficient (its start) must be > 0")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SAETrainingConfig fields {unknown}")
        return cls(**{**data, "adam_betas": tuple(data.get("adam_betas", (0.0, 0.999)))})


#: The λ controller holds λ while L0 is on course to reach the target within this many steps.
_STEER_HORIZON = 50


class L0Steer(NamedTuple):
    """State of the λ controller of one SAE."""

    coefficient: float
    """λ for the next step."""
    log_l0_ema: float
    """Running mean of log L0 (decay 0.9), the controller's view of where L0 is heading (NaN at start)."""


def steer_l0_coefficient(cfg: SAETrainingConfig, state: L0Steer, l0: float) -> L0Steer:
    """λ for the next step: integral control of log L0 towards ``cfg.target_l0``, paused while L0 is
    already heading there.

    ``log λ`` moves by ``rate · clip(log(L0 / target), ±1)``: up while the SAE is denser than the target,
    down while sparser. λ acts only through the thresholds, which Adam moves by about ``lr`` in log
    space per step, far slower than the encoder; a plain integrator keeps pushing while they catch up
    and overshoots (λ ends orders of magnitude too large). So λ is held whenever L0 is moving towards
    the target (``log L0`` on the other side of its running mean from the error).
    """
    log_l0 = math.log(max(l0, 1e-3))
    error = max(-1.0, min(1.0, log_l0 - math.log(cfg.target_l0)))
    ema = state.log_l0_ema
    # slope of log L0 per step: the running mean (decay 0.9) lags a steady trend by about 9 steps
    slope = (log_l0 - ema) / 9.0 if math.isfinite(ema) else 0.0
    approaching = error * slope < 0 and abs(error) < _STEER_HORIZON * abs(slope)
    coefficient = (
        state.coefficient if approaching else state.coefficient * math.exp(cfg.l0_controller_rate * error)
    )
    new_ema = log_l0 if not math.isfinite(ema) else 0.9 * ema + 0.1 * log_l0
    return L0Steer(coefficient, new_ema)


def learning_rate(cfg: SAETrainingConfig, step_index: int) -> float:
    """Learning rate of 0-based step ``step_index``: cosine warm-up from ``lr_warmup_start·lr``, then
    constant, then an optional linear decay to 0."""
    lr = cfg.lr
    if step_index < cfg.lr_warmup_steps:
        rise = 0.5 * (1.0 - math.cos(math.pi * step_index / cfg.lr_warmup_steps))
        return lr * (cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * rise)
    steps_left = cfg.total_steps - step_index
    if cfg.lr_decay_steps and steps_left <= cfg.lr_decay_steps:
        return lr * steps_left / cfg.lr_decay_steps
    return lr


def l0_coefficient_at(final: float, warmup_steps: int, step_index: int) -> float:
    """λ at 0-based step ``step_index``, rising linearly from 0 (SAELens's CoefficientScheduler)."""
    if warmup_steps and step_index < warmup_steps:
        return final * step_index / warmup_steps
    return final


class TrainingLoss(NamedTuple):
    """Loss of one batch, from the autograd reference path."""

    loss: Tensor
    """Scalar ``mse + λ·l0`` (differentiable)."""
    mse: Tensor
    """Squared reconstruction error summed over features, averaged over tokens."""
    l0: Tensor
    """Active latents per token, averaged (through the step estimator)."""
    acts: Tensor
    """Latent activations [batch, d_sae]."""
    recon: Tensor
    """Reconstructions [batch, d_in]."""


class TrainingForward(NamedTuple):
    """Forward pass of the trainable SAE."""

    recon: Tensor
    """Reconstructions [batch, d_in]."""
    acts: Tensor
    """Latent activations [batch, d_sae] (JumpReLU with the straight-through threshold gradient)."""
    pre: Tensor
    """Encoder pre-activations [batch, d_sae]."""


class StepStats(NamedTuple):
    """What :func:`loss_and_grads` measured on one batch."""

    loss: float
    """``mse + λ·l0`` with the λ used this step."""
    mse: float
    """Squared reconstruction error summed over features, averaged over tokens (scaled inputs)."""
    l0: float
    """Active latents per token, averaged over the batch."""
    fvu: float
    """Fraction of variance unexplained on the batch: Σ‖x - x̂‖² / Σ‖x - mean(x)‖²."""
    fired_F: Tensor
    """Tokens each latent fired on [d_sae] (int64)."""
    sparse: bool
    """Whether the sparse kernels were used."""


class GradStats(NamedTuple):
    """What a gradient kernel (dense or sparse) measured while writing the gradients."""

    mse: float
    """Squared reconstruction error summed over features, averaged over tokens."""
    l0: float
    """Active latents per token, averaged over the batch."""
    fired_F: Tensor
    """Tokens each latent fired on [d_sae] (int64)."""
    sparse: bool
    """Whether the sparse kernels ran."""


class JumpReLUTrainingSAE(nn.Module):
    """Trainable JumpReLU SAE; the threshold is stored as ``log_threshold`` so it stays positive."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l0_coefficient: float,
        bandwidth: float = 0.001,
        threshold_init: float = 0.001,
    ):
        super().__init__()
        if d_in <= 0 or d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {d_in}, {d_sae}")
        if bandwidth <= 0 or threshold_init <= 0 or l0_coefficient < 0:
            raise ValueError("bandwidth and threshold_init must be positive and l0_coefficient >= 0")
        self.d_in, self.d_sae = d_in, d_sae
        self.l0_coefficient = float(l0_coefficient)
        self.bandwidth = float(bandwidth)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))  # [D, F]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # [F]
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))  # [F, D], unit-norm rows
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # [D]
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(threshold_init)))  # [F]

    @classmethod
    def initialised(
        cls, cfg: SAETrainingConfig, *, l0_coefficient: float | None = None, seed: int | None = None
    ) -> JumpReLUTrainingSAE:
        """Gemma Scope init: W_dec He-uniform with unit-norm rows, W_enc = W_dec.T, biases 0."""
        sae = cls(
            cfg.d_in,
            cfg.d_sae,
            l0_coefficient=cfg.l0_coefficient if l0_coefficient is None else l0_coefficient,
            bandwidth=cfg.bandwidth,
            threshold_init=cfg.threshold_init,
        )
        generator = torch.Generator().manual_seed(cfg.init_seed if seed is None else seed)
        with torch.no_grad():
            nn.init.kaiming_uniform_(sae.W_dec, generator=generator)
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
        return sae

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def forward(self, x: Float[Tensor, "batch d_in"]) -> TrainingForward:
        """Reconstruction, activations and pre-activations, differentiable through the estimators."""
        pre_BF = x @ self.W_enc + self.b_enc
        acts_BF = jumprelu(pre_BF, self.threshold, self.bandwidth)
        return TrainingForward(acts_BF @ self.W_dec + self.b_dec, acts_BF, pre_BF)

    def training_loss(
        self, x: Float[Tensor, "batch d_in"], l0_coefficient: float | None = None
    ) -> TrainingLoss:
        """Reference loss through autograd (``l0_coefficient`` defaults to this SAE's final λ)."""
        coef = self.l0_coefficient if l0_coefficient is None else l0_coefficient
        recon_BD, acts_BF, pre_BF = self(x)
        mse = (recon_BD - x).pow(2).sum(-1).mean()
        l0 = step(pre_BF, self.threshold, self.bandwidth).sum(-1).mean()
        return TrainingLoss(mse + coef * l0, mse, l0, acts_BF, recon_BD)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each decoder row's gradient its component along that (unit-norm) row."""
        grad_FD = self.W_dec.grad
        if grad_FD is not None:
            parallel_F1 = (grad_FD * self.W_dec).sum(-1, keepdim=True)
            grad_FD.sub_(parallel_F1 * self.W_dec)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))

    def to_inference(
        self,
        *,
        input_scale: float = 1.0,
        hook_name: str = "",
        model_name: str = "",
        metadata: dict[str, Any] | None = None,
        reshape_hook_z: bool = False,
    ) -> JumpReLUSAE:
        """An inference SAE reading raw activations (``input_scale`` folded into the weights)."""
        cfg = SAEConfig(
            d_in=self.d_in,
            d_sae=self.d_sae,
            hook_name=hook_name,
            model_name=model_name,
            apply_b_dec_to_input=False,
            input_scale=input_scale,
            reshape_hook_z=reshape_hook_z,
            metadata=metadata or {},
        )
        tensors = {name: getattr(self, name).detach() for name in WEIGHT_SHAPES}  # threshold = exp(log θ)
        sae = JumpReLUSAE.from_tensors(tensors, cfg, source="training SAE", device=self.W_enc.device)
        sae.fold_input_scale()
        return sae


def make_saes(
    cfg: SAETrainingConfig, l0_coefficients: list[float] | tuple[float, ...] | None = None
) -> list[JumpReLUTrainingSAE]:
    """One freshly initialised SAE per L0 coefficient (default: ``cfg.l0_coefficient``), same init."""
    coefs = [cfg.l0_coefficient] if l0_coefficients is None else list(l0_coefficients)
    if not coefs:
        raise ValueError("l0_coefficients is empty")
    return [JumpReLUTrainingSAE.initialised(cfg, l0_coefficient=c) for c in coefs]


@torch.no_grad()
def init_from_data(
    sae: JumpReLUTrainingSAE,
    *,
    mean_D: Float[Tensor, " d_in"] | None = None,
    first_batch_BD: Float[Tensor, "batch d_in"] | None = None,
    target_l0: float = 0.0,
    min_threshold: float = 1e-3,
) -> None:
    """Data-dependent start from scaled inputs: centring biases and per-latent threshold quantiles.

    ``mean_D``: ``b_dec = mean`` and ``b_enc = -mean · W_enc`` (the encoder then reads centred inputs).
    ``target_l0`` with ``first_batch_BD``: each latent's threshold is set to the pre-activation it
    exceeds on ``round(target_l0 · B / d_sae)`` (at least 1) of the batch's tokens, so the first L0 is
    about ``target_l0`` and no latent starts dead; thresholds stay at or above ``min_threshold``.
    """
    if mean_D is not None:
        sae.b_dec.copy_(mean_D.to(sae.b_dec))
        sae.b_enc.copy_(-(mean_D.to(sae.W_enc) @ sae.W_enc))
    if target_l0 > 0:
        if first_batch_BD is None:
            raise ValueError("target_l0 needs first_batch_BD")
        x_BD = first_batch_BD.to(sae.W_enc)
        B = x_BD.shape[0]
        n_fire = min(B - 1, max(1, round(target_l0 * B / sae.d_sae)))
        pre_BF = torch.addmm(sae.b_enc, x_BD, sae.W_enc)
        # Midway between the n_fire-th and (n_fire+1)-th largest pre-activation of each latent, so
        # rounding (of the log-threshold round trip, of another matmul) does not change who fires.
        top_KF = pre_BF.topk(n_fire + 1, dim=0).values
        thr_F = (0.5 * (top_KF[-2] + top_KF[-1])).clamp(min=min_threshold)
        # Random decoder directions over-shoot: scale the encoder (and with it the thresholds, so the
        # same tokens fire) by the least-squares factor of the first batch's reconstruction.
        acts_BF = pre_BF * (pre_BF > thr_F)
        recon_BD = acts_BF @ sae.W_dec
        target_BD = x_BD - sae.b_dec
        scale = float((recon_BD * target_BD).sum() / (recon_BD * recon_BD).sum().clamp(min=1e-30))
        if math.isfinite(scale) and scale > 0:
            sae.W_enc.mul_(scale)
            sae.b_enc.mul_(scale)
            thr_F = (thr_F * scale).clamp(min=min_threshold)
        sae.log_threshold.copy_(thr_F.log())


def _grad_buffer(param: nn.Parameter) -> Tensor:
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    return param.grad


@torch.no_grad()
def loss_and_grads(
    sae: JumpReLUTrainingSAE,
    x_BD: Float[Tensor, "batch d_in"],
    l0_coefficient: float,
    sparse_below: float = 0.03,
) -> StepStats:
    """Loss of one batch and its gradients written into the parameters' ``.grad`` (no autograd).

    Equal to back-propagating :meth:`JumpReLUTrainingSAE.training_loss` up to float rounding.
    """
    B = x_BD.shape[0]
    bw = sae.bandwidth
    thr_F = sae.log_threshold.exp()
    pre_BF = torch.addmm(sae.b_enc, x_BD, sae.W_enc)
    # Pairs the loss can depend on: active (pre > θ) or inside the kernel (|pre - θ| < ε/2); pre ≤ θ - ε
    # is outside both, whatever the rounding of (pre - θ)/ε.
    reach_BF = pre_BF > (thr_F - bw) if sparse_below > 0 else None
    if reach_BF is not None and int(reach_BF.count_nonzero()) < sparse_below * B * sae.d_sae:
        stats = _sparse_grads(sae, x_BD, pre_BF, reach_BF, thr_F, l0_coefficient)
    else:
        del reach_BF
        stats = _dense_grads(sae, x_BD, pre_BF, thr_F, l0_coefficient)
    centred_BD = x_BD - x_BD.mean(0)
    total_var = float(torch.dot(centred_BD.view(-1), centred_BD.view(-1)))
    fvu = stats.mse * B / total_var if total_var > 0 else float("nan")
    return StepStats(
        stats.mse + l0_coefficient * stats.l0, stats.mse, stats.l0, fvu, stats.fired_F, stats.sparse
    )


def _threshold_grad(
    thr: Tensor, kernel_grad_sum: Tensor, kernel_count: Tensor, l0_coefficient: float, B: int, bw: float
) -> Tensor:
    """d loss / d log θ from Σ_b K·∂L/∂f and Σ_b K, the JumpReLU and step estimators combined."""
    grad_thr = -(thr / bw) * kernel_grad_sum - (l0_coefficient / (B * bw)) * kernel_count
    return grad_thr * thr  # chain rule through θ = exp(log θ)


def _dense_grads(
    sae: JumpReLUTrainingSAE, x_BD: Tensor, pre_BF: Tensor, thr_F: Tensor, coef: float
) -> GradStats:
    B = x_BD.shape[0]
    bw = sae.bandwidth
    active_BF = pre_BF > thr_F
    acts_BF = pre_BF * active_BF
    err_BD = torch.addmm(sae.b_dec, acts_BF, sae.W_dec).sub_(x_BD)
    mse = float(torch.dot(err_BD.view(-1), err_BD.view(-1))) / B
    g_BD = err_BD.mul_(2.0 / B)  # d mse / d x̂
    torch.sum(g_BD, 0, out=_grad_buffer(sae.b_dec))
    torch.mm(acts_BF.T, g_BD, out=_grad_buffer(sae.W_dec))
    del acts_BF
    grad_acts_BF = g_BD @ sae.W_dec.T
    # Kernel K((pre - θ)/ε) = 1[|(pre - θ)/ε| < 1/2], computed in place over pre (no longer needed).
    near_BF = pre_BF.sub_(thr_F).div_(bw).abs_() < 0.5
    kernel_grad_F = (grad_acts_BF * near_BF).sum(0)
    kernel_count_F = near_BF.sum(0, dtype=torch.float32)
    del near_BF
    _grad_buffer(sae.log_threshold).copy_(_threshold_grad(thr_F, kernel_grad_F, kernel_count_F, coef, B, bw))
    grad_pre_BF = grad_acts_BF.mul_(active_BF)
    torch.sum(grad_pre_BF, 0, out=_grad_buffer(sae.b_enc))
    torch.mm(x_BD.T, grad_pre_BF, out=_grad_buffer(sae.W_enc))
    fired_F = active_BF.sum(0)
    return GradStats(mse, float(fired_F.sum()) / B, fired_F, sparse=False)


def _sparse_grads(
    sae: JumpReLUTrainingSAE, x_BD: Tensor, pre_BF: Tensor, reach_BF: Tensor, thr_F: Tensor, coef: float
) -> GradStats:
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
    crow = _offsets(rows_N, B)
    acts_csr = _csr(crow, cols_N, acts_N, (B, F))
    err_BD = (acts_csr @ sae.W_dec).add_(sae.b_dec).sub_(x_BD)
    mse = float(torch.dot(err_BD.view(-1), err_BD.view(-1))) / B
    g_BD = err_BD.mul_(2.0 / B)
    torch.sum(g_BD, 0, out=_grad_buffer(sae.b_dec))
    # ∂L/∂f at the stored pairs only: a sampled dense-dense product.
    grad_acts_N = torch.sparse.sampled_addmm(acts_csr, g_BD, sae.W_dec.T, beta=0.0).values()
    grad_pre_N = grad_acts_N * active_N
    kernel_grad_F = torch.bincount(cols_N, weights=grad_acts_N * near_N, minlength=F)
    kernel_count_F = torch.bincount(cols_N, weights=near_N.to(torch.float32), minlength=F)
    _grad_buffer(sae.log_threshold).copy_(_threshold_grad(thr_F, kernel_grad_F, kernel_count_F, coef, B, bw))
    _grad_buffer(sae.b_enc).copy_(torch.bincount(cols_N, weights=grad_pre_N, minlength=F))
    # Transposed (latent-major) CSR with the same pairs, for the two weight gradients.
    order_N = torch.argsort(cols_N, stable=True)
    ccol = _offsets(cols_N[order_N], F)
    rows_T = rows_N[order_N]
    acts_T = _csr(ccol, rows_T, acts_N[order_N], (F, B))
    _grad_buffer(sae.W_dec).copy_(acts_T @ g_BD)
    grad_pre_T = _csr(ccol, rows_T, grad_pre_N[order_N], (F, B))
    _grad_buffer(sae.W_enc).copy_((grad_pre_T @ x_BD).T)
    fired_F = torch.bincount(cols_N[active_N], minlength=F)
    return GradStats(mse, float(active_N.sum()) / B, fired_F, sparse=True)


def _csr(offsets: Tensor, index: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR matrix built from indices that are valid by construction (no invariant checks, no beta warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(offsets, index, values, size=size, check_invariants=False)


def _offsets(sorted_index: Tensor, n: int) -> Tensor:
    """CSR row offsets [n + 1] from a sorted row index per stored element."""
    counts = torch.bincount(sorted_index, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])
