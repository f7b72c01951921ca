"""SAE training settings and what every training SAE shares: the config, the step's input and
statistics, and the learning-rate and λ schedules.

One trainer (:mod:`g2interp.sae.trainer`) trains every architecture through the small interface of
:class:`TrainingSAE`: ``loss_and_grads`` writes one batch's gradients into the parameters' ``.grad``,
``after_step`` restores the constraints after the optimiser step, ``init_from_data`` starts from the
first batch, and ``inference_tensors`` gives the weights of the inference SAE (a JumpReLU SAE or
transcoder, :class:`~g2interp.sae.sae.JumpReLUSAE`, for every architecture). The architectures:

* ``jumprelu`` (:mod:`g2interp.sae.jumprelu`): Gemma Scope's JumpReLU, thresholds trained through
  straight-through estimators, with Gemma Scope 2's quadratic L0 penalty towards ``target_l0``;
* ``batchtopk`` and ``matryoshka`` (:mod:`g2interp.sae.topk`): BatchTopK with ``k = target_l0``,
  and its Matryoshka form (nested prefixes of the dictionary each trained to reconstruct).

Each can be a transcoder (``hook_name_out``: it reads one hook and reconstructs another), optionally
with an affine skip connection.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from jaxtyping import Float
from torch import Tensor

from g2interp.cli_config import require_ints, require_positive
from g2interp.sae.sae import check_transcoder_hooks

#: Values of :attr:`SAETrainingConfig.architecture`.
ARCHITECTURES = ("jumprelu", "batchtopk", "matryoshka")
#: Values of :attr:`SAETrainingConfig.l0_target_per`.
L0_TARGET_SCOPES = ("token", "batch")
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
    architecture: str = "jumprelu"
    """``jumprelu`` (Gemma Scope), ``batchtopk`` or ``matryoshka`` (Matryoshka BatchTopK)."""
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
    target_l0: float = 0.0
    """Active latents per token the run aims at. ``jumprelu``: the L0 penalty becomes Gemma Scope 2's
    quadratic ``λ · 2/T · (L0 - T)²`` per token and the thresholds start where each latent fires on
    ``T / d_sae`` of the first batch (0: Gemma Scope 1's linear ``λ · L0``); ``batchtopk`` and
    ``matryoshka``: ``k`` (required). At least 1 and at most ``d_sae`` when set."""
    l0_target_per: str = "token"
    """``jumprelu`` with a target: ``token`` pulls each token's L0 to the target (Gemma Scope 2, SAELens's
    ``quadratic`` mode); ``batch`` pulls the batch's mean L0 there, leaving tokens their own L0."""
    l0_coefficient: float = 6e-4
    """Weight λ of the L0 penalty, linear or quadratic (Gemma Scope: 6e-4 gives L0 ≈ 50 on Gemma 2 9B
    layer 20); a sweep gives each SAE its own (see ``make_saes``). Unused by the top-k architectures."""
    l0_warmup_steps: int = 10_000
    """Steps over which λ rises linearly from 0 (λ·min(1, step/warm-up), as SAELens)."""
    aux_coefficient: float = 0.0
    """Weight of the AuxK loss that revives dead latents (0: none; 1/32 is OpenAI's and the short-run
    recipe's): each token's ``d_in // 2`` largest pre-activations among the latents dead for
    ``dead_window_steps`` reconstruct the residual ``y - ŷ`` (:mod:`g2interp.sae.auxk`), for every
    architecture."""
    matryoshka_widths: tuple[int, ...] = ()
    """``matryoshka``: the nested dictionary sizes, increasing and ending at ``d_sae`` (empty: ``d_sae``
    / 16, / 8, / 4, / 2 and ``d_sae``)."""
    bandwidth: float = 0.001
    """Width ε of the rectangle kernel of the straight-through estimators (on unit-norm inputs)."""
    threshold_init: float = 0.001
    """Initial JumpReLU threshold of every latent (and the floor of the data-dependent start)."""
    topk_threshold_lr: float = 0.01
    """Top-k architectures: rate of the running mean of the smallest kept activation, the threshold of
    the inference SAE (SAELens's ``topk_threshold_lr``)."""
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
    b_dec_init: str = "zeros"
    """``"zeros"`` (Gemma Scope) or ``"mean"``: ``b_dec`` starts at the mean of the input-scale batches
    (of the target, for a transcoder) and ``b_enc`` at ``-mean · W_enc``, so the encoder starts on
    centred inputs (short runs need it: a few residual dimensions carry most of the norm as an almost
    constant offset)."""
    reshape_hook_z: bool = False
    """The hook gives ``[..., n_heads, d_head]`` (``attn.hook_z``) and batches hold it flattened; the
    saved SAEs then read either shape (SAELens's ``reshape_activations="hook_z"``)."""
    hook_name: str = ""
    """Hook the activations come from (recorded in the saved SAEs)."""
    hook_name_out: str = ""
    """Transcoder: the hook it reconstructs (``blocks.L.hook_mlp_out`` for ``hook_name`` =
    ``blocks.L.hook_mlp_in``); empty for an SAE."""
    d_out: int = 0
    """Width of what is reconstructed: 0 means ``d_in`` (an SAE); a transcoder's output hook's width."""
    affine_skip: bool = False
    """Transcoder: also learn an affine skip connection ``x W_skip^T`` (Gemma Scope 2's skip transcoders)."""
    model_name: str = ""
    """Model the activations come from (recorded in the saved SAEs)."""

    def __post_init__(self) -> None:
        require_ints(
            self, "d_in", "d_sae", "total_tokens", "batch_size", "n_norm_batches", "dead_window_steps"
        )
        require_ints(self, "log_every", "keep_checkpoints")
        require_ints(
            self,
            "lr_warmup_steps",
            "lr_decay_steps",
            "l0_warmup_steps",
            "checkpoint_every",
            "d_out",
            minimum=0,
        )
        require_ints(self, "init_seed", minimum=0)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.total_tokens < self.batch_size:
            raise ValueError(f"total_tokens ({self.total_tokens}) is less than one batch ({self.batch_size})")
        if self.lr_decay_steps > self.total_steps:
            raise ValueError(
                f"lr_decay_steps ({self.lr_decay_steps}) exceeds the run's {self.total_steps} steps"
            )
        require_positive(self, "lr", "adam_eps", "bandwidth", "threshold_init")
        require_positive(self, "l0_coefficient", "aux_coefficient", allow_zero=True)
        if not 0 < self.topk_threshold_lr <= 1:
            raise ValueError(f"topk_threshold_lr must lie in (0, 1], got {self.topk_threshold_lr!r}")
        if not 0 < self.lr_warmup_start <= 1:
            raise ValueError(f"lr_warmup_start must lie in (0, 1], got {self.lr_warmup_start!r}")
        betas = tuple(float(b) for b in self.adam_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        object.__setattr__(self, "adam_betas", betas)  # Adam wants floats (not a float and an int)
        if not 0 <= self.sparse_below <= 1:
            raise ValueError(f"sparse_below must lie in [0, 1], got {self.sparse_below!r}")
        self._check_sparsity()
        if self.l0_target_per not in L0_TARGET_SCOPES:
            raise ValueError(f"l0_target_per must be one of {L0_TARGET_SCOPES}, got {self.l0_target_per!r}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")
        self._check_transcoder()

    def _check_sparsity(self) -> None:
        target = self.target_l0
        if isinstance(target, bool) or not isinstance(target, int | float) or not math.isfinite(target):
            raise ValueError(f"target_l0 must be a number, got {target!r}")
        if target != 0 and not 1 <= target <= self.d_sae:
            raise ValueError(
                f"target_l0 must lie in [1, d_sae={self.d_sae}] (or be 0: no target), got {target!r}"
            )
        if self.architecture != "jumprelu" and target == 0:
            raise ValueError(
                f"architecture {self.architecture!r} needs target_l0 (its k), in [1, {self.d_sae}]"
            )
        widths = tuple(self.matryoshka_widths)
        if widths and self.architecture != "matryoshka":
            raise ValueError(
                f"matryoshka_widths are for architecture 'matryoshka', not {self.architecture!r}"
            )
        if self.architecture == "matryoshka":
            if not widths:
                widths = tuple(
                    w for w in (self.d_sae // 16, self.d_sae // 8, self.d_sae // 4, self.d_sae // 2) if w
                )
                widths = (*dict.fromkeys(widths), self.d_sae)
            ok = all(isinstance(w, int) and not isinstance(w, bool) for w in widths)
            if (
                not ok
                or widths[0] < 1
                or any(b <= a for a, b in itertools.pairwise(widths))
                or widths[-1] != self.d_sae
            ):
                raise ValueError(
                    f"matryoshka_widths must be increasing positive ints ending at d_sae={self.d_sae}, "
                    f"got {list(self.matryoshka_widths)}"
                )
        object.__setattr__(self, "matryoshka_widths", widths)

    def _check_transcoder(self) -> None:
        if self.hook_name_out:
            if self.hook_name:
                check_transcoder_hooks(self.hook_name, self.hook_name_out)
            if self.reshape_hook_z:
                raise ValueError(
                    "a transcoder reads hook_mlp_in, not attn.hook_z: reshape_hook_z must be False"
                )
        elif self.affine_skip or self.d_out not in (0, self.d_in):
            raise ValueError(
                "affine_skip and a d_out other than d_in are for transcoders: set hook_name_out "
                "(blocks.L.hook_mlp_out for hook_name blocks.L.hook_mlp_in)"
            )
        object.__setattr__(self, "d_out", self.d_out or self.d_in)

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    @property
    def is_transcoder(self) -> bool:
        return bool(self.hook_name_out)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        out["matryoshka_widths"] = list(self.matryoshka_widths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SAETrainingConfig fields {unknown}")
        return cls(
            **{
                **data,
                "adam_betas": tuple(data.get("adam_betas", (0.0, 0.999))),
                "matryoshka_widths": tuple(data.get("matryoshka_widths", ())),
            }
        )


class StepInput(NamedTuple):
    """What the trainer gives a training SAE at each step."""

    x_BD: Tensor
    """Scaled inputs [batch, d_in] (unit mean squared norm)."""
    y_BD: Tensor
    """Scaled reconstruction target [batch, d_out]: ``x_BD`` itself for an SAE, the output hook's
    activations for a transcoder."""
    l0_coefficient: float
    """λ of the L0 penalty this step (after warm-up); JumpReLU only."""
    dead_F: Tensor
    """Bool [d_sae]: latents that fired on no token in the last ``dead_window_steps`` steps."""
    sparse_below: float
    """:attr:`SAETrainingConfig.sparse_below`."""


class StepStats(NamedTuple):
    """What ``loss_and_grads`` measured on one batch."""

    loss: float
    """The whole loss (reconstruction, sparsity and auxiliary terms) with this step's coefficients."""
    mse: float
    """Squared reconstruction error summed over features, averaged over tokens (scaled inputs)."""
    l0: float
    """Active latents per token, averaged over the batch."""
    fvu: float
    """Fraction of variance unexplained on the batch: Σ‖y - ŷ‖² / Σ‖y - mean(y)‖²."""
    fired_F: Tensor
    """Tokens each latent fired on [d_sae] (int64)."""
    sparse: bool
    """Whether the sparse kernels were used."""


class TrainingSAE(Protocol):
    """What the trainer needs of a training SAE (an ``nn.Module`` whose parameters Adam trains;
    state that is not trained lives in persistent buffers, so checkpoints hold it)."""

    d_in: int
    d_sae: int
    d_out: int

    def loss_and_grads(self, inp: StepInput) -> StepStats:
        """One batch's loss; its gradients written into every parameter's ``.grad``."""
        ...

    def after_step(self) -> None:
        """Restore constraints after the optimiser step (unit-norm decoder rows, thresholds >= 0)."""
        ...

    def init_from_data(
        self, mean_x_D: Tensor | None, mean_y_D: Tensor | None, first_x_BD: Tensor, first_y_BD: Tensor
    ) -> None:
        """Data-dependent start from the scaled first batch (and means, with ``b_dec_init="mean"``)."""
        ...

    def inference_tensors(self, input_scale: float, output_scale: float) -> dict[str, Tensor]:
        """Weights of the inference JumpReLU SAE / transcoder reading raw activations (scales folded)."""
        ...


def fvu_of(sq_err: float, y_BD: Float[Tensor, "batch d_out"]) -> float:
    """Fraction of variance unexplained: ``sq_err`` over the batch's total variance around its mean."""
    centred_BD = y_BD - y_BD.mean(0)
    total_var = float(centred_BD.pow(2).sum())
    return sq_err / total_var if total_var > 0 else float("nan")


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
