"""BatchTopK and Matryoshka-BatchTopK training SAEs (and transcoders), as SAELens 6.54.

Per batch of ``B`` tokens the ``k·B`` largest ReLU'd pre-activations of the whole batch are kept
(``pre = x W_enc + b_enc``; the decoder rows stay unit norm, so SAELens's ranking by ``pre·‖W_dec‖``
is the plain pre-activation). Loss: ``mse + aux_k_coefficient · AuxK`` where the AuxK term has the
``k_aux`` largest pre-activations of dead latents reconstruct the residual ``y - ŷ``; a Matryoshka SAE
adds the MSE of each shorter prefix's reconstruction. The inference SAE is a JumpReLU SAE whose every
threshold is the running mean of the smallest kept activation (buffer ``topk_threshold``).

:meth:`BatchTopKTrainingSAE.loss_and_grads` writes the gradients by hand with no graph. Only ``k·B``
of the ``B·d_sae`` pairs are active, so it decodes and back-propagates through sparse products of
those pairs (weighted ``embedding_bag`` and CSR ``sampled_addmm``), leaving one dense matmul (the
encoder) per step, and finds the batch's top ``k·B`` among the few pre-activations above a cut-off
estimated from a sample of rows (a full ``topk`` over ``B·d_sae`` values costs twice the encoder).
The AuxK terms run densely over the dead latents' columns. With many pairs active (``k / d_sae`` at
or above ``sparse_below``) it runs the same loss through autograd instead.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from g2interp.sae.auxk import add_auxk_grads, auxk_terms, dead_columns
from g2interp.sae.sparse import csr, grad_buffer
from g2interp.sae.sparse import offsets as sparse_offsets
from g2interp.sae.training import StepInput, StepStats, fvu_of

logger = logging.getLogger(__name__)

#: Rows of the batch sampled to estimate where its top ``k·B`` pre-activations begin.
_SAMPLE_ROWS = 64


class Pairs(NamedTuple):
    """(token, latent) pairs of one batch and their activations; row-major when kept by BatchTopK."""

    rows_N: Tensor
    """Token of each pair (int64)."""
    cols_N: Tensor
    """Latent of each pair (int64)."""
    acts_N: Tensor
    """Activation of each pair (its pre-activation; > 0 for BatchTopK's pairs)."""


class TopKLoss(NamedTuple):
    """Loss of one batch from the dense autograd path (:meth:`BatchTopKTrainingSAE.training_loss`)."""

    loss: Tensor
    """Scalar ``mse + Σ inner mse + aux_k_coefficient · aux`` (differentiable)."""
    mse: Tensor
    """Squared error of the full reconstruction, summed over features, averaged over tokens."""
    inner_mse: Tensor
    """The shorter prefixes' reconstruction MSEs, summed (0 unless Matryoshka)."""
    aux: Tensor
    """AuxK loss, already scaled by ``min(n_dead / k_aux, 1)`` (before ``aux_k_coefficient``)."""
    acts: Tensor
    """Latent activations [batch, d_sae]."""
    recon: Tensor
    """Full reconstructions [batch, d_out]."""


class BatchTopKTrainingSAE(nn.Module):
    """Trainable BatchTopK SAE or transcoder; Matryoshka when ``matryoshka_widths`` is given.

    ``k``: kept activations per token on average over a batch (SAELens keeps ``int(k·B)``).
    ``matryoshka_widths``: strictly increasing prefix sizes ending at ``d_sae``.
    ``k_aux``: dead latents per token in the AuxK loss (default ``d_in // 2``, SAELens's heuristic).
    """

    W_skip: nn.Parameter | None
    topk_threshold: Tensor

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        k: float,
        d_out: int | None = None,
        affine_skip: bool = False,
        aux_k_coefficient: float = 1 / 32,
        k_aux: int | None = None,
        threshold_lr: float = 0.01,
        matryoshka_widths: Sequence[int] = (),
        seed: int = 0,
    ):
        super().__init__()
        d_out = d_in if d_out is None or d_out == 0 else d_out
        for name, value in (("d_in", d_in), ("d_sae", d_sae), ("d_out", d_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(k, bool) or not isinstance(k, int | float) or not 1 <= k <= d_sae:
            raise ValueError(f"k must be a number in [1, d_sae={d_sae}], got {k!r}")
        k_aux = d_in // 2 if k_aux is None else k_aux
        if isinstance(k_aux, bool) or not isinstance(k_aux, int) or k_aux < 1:
            raise ValueError(f"k_aux must be a positive int (default d_in // 2 >= 1), got {k_aux!r}")
        if not math.isfinite(aux_k_coefficient) or aux_k_coefficient < 0:
            raise ValueError(f"aux_k_coefficient must be >= 0, got {aux_k_coefficient!r}")
        if not 0 < threshold_lr <= 1:
            raise ValueError(f"threshold_lr must lie in (0, 1], got {threshold_lr!r}")
        self.d_in, self.d_sae, self.d_out = d_in, d_sae, d_out
        self.k = float(k)
        self.k_aux = k_aux
        self.aux_k_coefficient = float(aux_k_coefficient)
        self.threshold_lr = float(threshold_lr)
        self.matryoshka_widths = _check_widths(matryoshka_widths, d_sae)
        # The reconstructions trained: each Matryoshka prefix, the last being the full dictionary.
        self.widths = self.matryoshka_widths or (d_sae,)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))  # [D, F]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # [F]
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out))  # [F, O], unit-norm rows
        self.b_dec = nn.Parameter(torch.zeros(d_out))  # [O]
        skip = nn.Parameter(torch.zeros(d_out, d_in)) if affine_skip else None  # [O, D]
        self.register_parameter("W_skip", skip)
        # float64 as SAELens: a float32 running mean at rate 0.01 loses the low bits of each update.
        self.register_buffer("topk_threshold", torch.zeros((), dtype=torch.float64), persistent=True)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_dec, generator=generator)
            self.normalise_decoder()
            if d_out == d_in:
                self.W_enc.copy_(self.W_dec.T)
            else:  # unit-norm columns, like W_dec.T, so pre-activations start on the same scale
                nn.init.kaiming_uniform_(self.W_enc, generator=generator)
                self.W_enc.div_(self.W_enc.norm(dim=0, keepdim=True))

    def extra_repr(self) -> str:
        widths = f", matryoshka_widths={list(self.matryoshka_widths)}" if self.matryoshka_widths else ""
        return (
            f"d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}, k={self.k:g}, "
            f"affine_skip={self.W_skip is not None}{widths}"
        )

    @property
    def threshold(self) -> float:
        """The running inference threshold (on scaled activations)."""
        return float(self.topk_threshold)

    def n_keep(self, batch_size: int) -> int:
        """Pairs a batch of ``batch_size`` tokens keeps: ``int(k·B)`` (SAELens truncates)."""
        return int(self.k * batch_size)

    # ------------------------------------------------------------------ forward
    def pre_activations(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        """``x W_enc + b_enc`` (the encoder reads ``x`` itself: SAELens's ``apply_b_dec_to_input=False``)."""
        return torch.addmm(self.b_enc, x, self.W_enc)

    def base(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_out"]:
        """The output without latents: ``b_dec`` (+ ``x W_skip^T``), shared by every prefix."""
        if self.W_skip is None:
            return self.b_dec.expand(x.shape[0], -1)
        return torch.addmm(self.b_dec, x, self.W_skip.T)

    def aux_pairs(
        self, pre_BF: Float[Tensor, "batch d_sae"], dead_F: Bool[Tensor, " d_sae"] | None
    ) -> tuple[Pairs, float] | None:
        """The AuxK pairs (each token's ``k_aux`` largest pre-activations among dead latents, which may
        be negative, as SAELens) and the loss scale ``min(n_dead / k_aux, 1)``; None without dead latents."""
        dead_idx = dead_F.nonzero().squeeze(1) if dead_F is not None else None
        if dead_idx is None or dead_idx.numel() == 0:
            return None
        B, n_dead = pre_BF.shape[0], dead_idx.numel()
        k_eff = min(self.k_aux, n_dead)
        vals_BK, pos_BK = pre_BF[:, dead_idx].topk(k_eff, dim=1, sorted=False)
        rows_N = torch.arange(B, device=pre_BF.device).repeat_interleave(k_eff)
        return Pairs(rows_N, dead_idx[pos_BK].reshape(-1), vals_BK.reshape(-1)), min(n_dead / self.k_aux, 1.0)

    def training_loss(
        self,
        x_BD: Float[Tensor, "batch d_in"],
        y_BD: Float[Tensor, "batch d_out"] | None = None,
        dead_F: Bool[Tensor, " d_sae"] | None = None,
    ) -> TopKLoss:
        """The loss through autograd (dense), without updating the running threshold."""
        y_BD = x_BD if y_BD is None else y_BD
        pre_BF = self.pre_activations(x_BD)
        pairs = batch_topk_pairs(pre_BF.detach(), self.n_keep(x_BD.shape[0]))
        return self._dense_loss(x_BD, y_BD, pre_BF, pairs, self.aux_pairs(pre_BF.detach(), dead_F))

    def _dense_loss(
        self, x_BD: Tensor, y_BD: Tensor, pre_BF: Tensor, pairs: Pairs, aux: tuple[Pairs, float] | None
    ) -> TopKLoss:
        B = x_BD.shape[0]
        keep_BF = torch.zeros_like(pre_BF, dtype=torch.bool)
        keep_BF[pairs.rows_N, pairs.cols_N] = True
        acts_BF = pre_BF * keep_BF  # straight through the selection; kept values are > 0 (past the ReLU)
        recon_BO = self.base(x_BD)
        sq_errs, start = [], 0
        for width in self.widths:
            recon_BO = recon_BO + acts_BF[:, start:width] @ self.W_dec[start:width]
            sq_errs.append((recon_BO - y_BD).pow(2).sum() / B)
            start = width
        mse, inner = sq_errs[-1], sum(sq_errs[:-1], pre_BF.new_zeros(()))
        aux_loss = pre_BF.new_zeros(())
        if aux is not None:
            (rows_N, cols_N, _), scale = aux
            aux_BF = torch.zeros_like(pre_BF).index_put((rows_N, cols_N), pre_BF[rows_N, cols_N])
            residual_BO = (y_BD - recon_BO).detach()
            aux_loss = scale * (aux_BF @ self.W_dec - residual_BO).pow(2).sum() / B
        loss = mse + inner + self.aux_k_coefficient * aux_loss
        return TopKLoss(loss, mse, inner, aux_loss, acts_BF, recon_BO)

    # ------------------------------------------------------------------ the trainer's interface
    @torch.no_grad()
    def loss_and_grads(self, inp: StepInput) -> StepStats:
        """One batch's loss, its gradients written into every parameter's ``.grad`` (the decoder's
        projected onto the unit-norm constraint), and the running threshold updated.

        Sparse kernels when the kept fraction ``k / d_sae`` is under ``inp.sparse_below``."""
        x_BD, y_BD = inp.x_BD, inp.y_BD
        B = x_BD.shape[0]
        pre_BF = self.pre_activations(x_BD)
        pairs = batch_topk_pairs(pre_BF, self.n_keep(B))
        self.update_threshold(pairs.acts_N)
        sparse = self.k / self.d_sae < inp.sparse_below
        if sparse:
            loss, mse, sq_err = self._sparse_grads(x_BD, y_BD, pre_BF, pairs, inp.dead_F)
        else:
            aux = self.aux_pairs(pre_BF, inp.dead_F) if self.aux_k_coefficient > 0 else None
            loss, mse, sq_err = self._autograd_grads(x_BD, y_BD, pre_BF, pairs, aux)
        self.project_decoder_grad()
        fired_F = torch.bincount(pairs.cols_N, minlength=self.d_sae)
        return StepStats(loss, mse, pairs.rows_N.numel() / B, fvu_of(sq_err, y_BD), fired_F, sparse)

    @torch.no_grad()
    def update_threshold(self, acts_N: Float[Tensor, " n"]) -> None:
        """SAELens's running threshold: ``θ ← (1 - lr)·θ + lr·min(kept positive activations)``."""
        if acts_N.numel():
            lr = self.threshold_lr
            self.topk_threshold.mul_(1 - lr).add_(lr * acts_N.min().to(torch.float64))

    @torch.no_grad()
    def after_step(self) -> None:
        """Rescale decoder rows to unit norm (the projected gradient keeps them near it)."""
        self.normalise_decoder()

    @torch.no_grad()
    def init_from_data(
        self,
        mean_x_D: Float[Tensor, " d_in"] | None,
        mean_y_D: Float[Tensor, " d_out"] | None,
        first_x_BD: Float[Tensor, "batch d_in"],
        first_y_BD: Float[Tensor, "batch d_out"],
    ) -> None:
        """Centre on the data, rescale the encoder to fit the first batch, and start the threshold there.

        ``b_dec`` = mean of y minus the skip of mean x and ``b_enc = -mean_x W_enc`` (the means default
        to the first batch's: a few residual dimensions carry huge, almost constant offsets that would
        otherwise decide the top-k). Random decoder directions over-shoot, so the encoder is scaled by
        the least-squares factor of the first batch's reconstruction (the top-k choice is unchanged),
        and the running threshold starts at that batch's smallest kept activation rather than 0.
        """
        x_BD, y_BO = first_x_BD.to(self.W_enc), first_y_BD.to(self.W_enc)
        mean_x_D = x_BD.mean(0) if mean_x_D is None else mean_x_D.to(self.W_enc)
        mean_y_D = y_BO.mean(0) if mean_y_D is None else mean_y_D.to(self.W_enc)
        skip_O = self.W_skip @ mean_x_D if self.W_skip is not None else 0.0
        self.b_dec.copy_(mean_y_D - skip_O)
        self.b_enc.copy_(-(mean_x_D @ self.W_enc))
        pairs = batch_topk_pairs(self.pre_activations(x_BD), self.n_keep(x_BD.shape[0]))
        if pairs.acts_N.numel() == 0:
            return
        offsets_B = sparse_offsets(pairs.rows_N, x_BD.shape[0])
        recon_BO = _bag_matmul(offsets_B, pairs.cols_N, pairs.acts_N, self.W_dec)
        target_BO = y_BO - self.base(x_BD)
        scale = float((recon_BO * target_BO).sum() / (recon_BO * recon_BO).sum().clamp(min=1e-30))
        if math.isfinite(scale) and scale > 0:
            self.W_enc.mul_(scale)
            self.b_enc.mul_(scale)
        else:
            scale = 1.0
        self.topk_threshold.fill_(float(pairs.acts_N.min()) * scale)

    @torch.no_grad()
    def inference_tensors(self, input_scale: float, output_scale: float) -> dict[str, Tensor]:
        """Weights of the inference JumpReLU SAE / transcoder reading raw ``x`` and writing raw ``y``.

        Training saw ``x·s_in`` and ``y·s_out``. Pre-activations are divided by ``s_out`` so the
        decoder rows stay unit norm (SAELens's saved BatchTopK SAEs): ``W_enc·s_in/s_out``,
        ``b_enc/s_out``, threshold ``θ/s_out``; then ``b_dec/s_out`` and ``W_skip·s_in/s_out``.
        """
        ratio = input_scale / output_scale
        out = {
            "W_enc": self.W_enc.detach() * ratio,
            "b_enc": self.b_enc.detach() / output_scale,
            "W_dec": self.W_dec.detach().clone(),
            "b_dec": self.b_dec.detach() / output_scale,
            "threshold": torch.full_like(self.b_enc.detach(), self.threshold / output_scale),
        }
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip.detach() * ratio
        return {name: t.contiguous() for name, t in out.items()}

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each decoder row's gradient its component along that (unit-norm) row."""
        grad_FO = self.W_dec.grad
        if grad_FO is not None:
            grad_FO.sub_((grad_FO * self.W_dec).sum(-1, keepdim=True) * self.W_dec)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))

    # ------------------------------------------------------------------ gradient kernels
    def _autograd_grads(
        self, x_BD: Tensor, y_BD: Tensor, pre_BF: Tensor, pairs: Pairs, aux: tuple[Pairs, float] | None
    ) -> tuple[float, float, float]:
        """Dense path: autograd from the pre-activations on; encoder gradients from theirs."""
        decoder = [p for p in (self.W_dec, self.b_dec, self.W_skip) if p is not None]
        with torch.enable_grad():
            pre_BF = pre_BF.detach().requires_grad_()
            terms = self._dense_loss(x_BD, y_BD, pre_BF, pairs, aux)
            grads = torch.autograd.grad(terms.loss, [pre_BF, *decoder])
        for param, grad in zip(decoder, grads[1:], strict=True):
            grad_buffer(param).copy_(grad)
        torch.sum(grads[0], 0, out=grad_buffer(self.b_enc))
        torch.mm(x_BD.T, grads[0], out=grad_buffer(self.W_enc))
        mse = float(terms.mse)
        return float(terms.loss), mse, mse * x_BD.shape[0]

    def _sparse_grads(
        self, x_BD: Tensor, y_BD: Tensor, pre_BF: Tensor, pairs: Pairs, dead_F: Tensor | None
    ) -> tuple[float, float, float]:
        """Sparse path. With prefixes 1..P, latent j of prefix group p(j) reaches reconstructions
        p(j)..P, so its gradient reads ``Σ_{q ≥ p(j)} ∂L/∂ŷ_q``: pairs are stacked by group, as rows
        ``p·B + b`` of a [P·B, d_sae] sparse matrix, against the suffix sums of the errors [P·B, d_out]."""
        B, F, P = x_BD.shape[0], self.d_sae, len(self.widths)
        rows_N, cols_N, acts_N = pairs
        if P > 1:  # order (group, token, latent): the row-major order of the stacked matrix
            group_N = torch.bucketize(cols_N, cols_N.new_tensor(self.widths[:-1]), right=True)
            order_N = torch.argsort(group_N, stable=True)
            rows_N, cols_N, acts_N, group_N = (t[order_N] for t in (rows_N, cols_N, acts_N, group_N))
            stack_N = group_N * B + rows_N
        else:
            stack_N = rows_N
        offsets_S = sparse_offsets(stack_N, P * B)
        recon_PBO = _bag_matmul(offsets_S, cols_N, acts_N, self.W_dec).view(P, B, self.d_out)
        if P > 1:
            recon_PBO = recon_PBO.cumsum(0)
        err_PBO = recon_PBO.add_(self.base(x_BD)).sub_(y_BD)  # ŷ_p - y
        sq_err_P = err_PBO.pow(2).sum((1, 2))
        sq_err = float(sq_err_P[-1])
        loss = float(sq_err_P.sum()) / B
        # AuxK terms, read from the residual before err becomes the gradient, added after the rest
        dead = dead_columns(pre_BF, dead_F) if self.aux_k_coefficient > 0 else None
        aux = None if dead is None else auxk_terms(dead, err_PBO[-1], self.W_dec, self.k_aux)
        g_PBO = err_PBO.mul_(2.0 / B)  # d mse_p / d ŷ_p
        if P > 1:
            g_PBO = g_PBO.flip(0).cumsum(0).flip(0)
        g_SO = g_PBO.view(P * B, self.d_out)
        torch.sum(g_PBO[0], 0, out=grad_buffer(self.b_dec))
        if self.W_skip is not None:
            torch.mm(g_PBO[0].T, x_BD, out=grad_buffer(self.W_skip))
        acts_csr = csr(offsets_S, cols_N, acts_N, (P * B, F))
        grad_pre_N = torch.sparse.sampled_addmm(acts_csr, g_SO, self.W_dec.T, beta=0.0).values()
        # Weight gradients as latent-major sparse products.
        order_N = torch.argsort(cols_N, stable=True)
        offsets_F = sparse_offsets(cols_N[order_N], F)
        grad_buffer(self.W_dec).copy_(_bag_matmul(offsets_F, stack_N[order_N], acts_N[order_N], g_SO))
        grad_enc_FD = _bag_matmul(offsets_F, rows_N[order_N], grad_pre_N[order_N], x_BD)
        grad_buffer(self.W_enc).copy_(grad_enc_FD.T)
        grad_buffer(self.b_enc).copy_(torch.bincount(cols_N, weights=grad_pre_N, minlength=F))
        if aux is not None:
            loss += self.aux_k_coefficient * add_auxk_grads(self, x_BD, aux, self.aux_k_coefficient)
        return loss, sq_err / B, sq_err


@torch.no_grad()
def batch_topk_pairs(pre_BF: Float[Tensor, "batch d_sae"], n_keep: int) -> Pairs:
    """The ``n_keep`` largest ReLU'd pre-activations of the batch, those > 0 (SAELens's BatchTopK
    keeps zeros when fewer are positive, which changes nothing).

    Equal to a ``topk`` of the flattened batch up to ties, but it runs the ``topk`` only over the
    values above a cut-off: the value exceeded by ~1.25× the kept share of a sample of rows. If fewer
    than ``n_keep`` values pass the cut-off, it falls back to all positive values."""
    B, F = pre_BF.shape
    flat = pre_BF.reshape(-1)
    sample = pre_BF[:: max(1, B // _SAMPLE_ROWS)].reshape(-1)
    m = min(sample.numel(), math.ceil(1.25 * n_keep * sample.numel() / flat.numel()) + 64)
    cut = max(0.0, float(sample.topk(m, sorted=False).values.min()))
    idx_N = (flat > cut).nonzero().squeeze(1)
    if idx_N.numel() < n_keep and cut > 0:
        logger.debug(
            "BatchTopK cut-off %.4g passed %d < %d values; using all positive", cut, idx_N.numel(), n_keep
        )
        idx_N = (flat > 0).nonzero().squeeze(1)
    vals_N = flat[idx_N]
    if idx_N.numel() > n_keep:
        keep_N = torch.zeros_like(idx_N, dtype=torch.bool)
        keep_N[vals_N.topk(n_keep, sorted=False).indices] = True
        idx_N, vals_N = idx_N[keep_N], vals_N[keep_N]
    return Pairs(idx_N // F, idx_N % F, vals_N)


def _check_widths(widths: Sequence[int], d_sae: int) -> tuple[int, ...]:
    """Matryoshka widths, strictly increasing positive ints ending at ``d_sae`` (empty: plain BatchTopK).

    SAELens counts the full width once: its base loss is the full reconstruction's MSE and it adds the
    inner losses of ``widths[:-1]``; so does this module (the last prefix *is* the full dictionary)."""
    out = tuple(widths)
    if not out:
        return out
    ok = all(isinstance(w, int) and not isinstance(w, bool) for w in out)
    if not ok or out[0] < 1 or any(b <= a for a, b in itertools.pairwise(out)) or out[-1] != d_sae:
        raise ValueError(
            f"matryoshka_widths must be strictly increasing positive ints ending at d_sae={d_sae}, "
            f"got {list(widths)}"
        )
    return out


def _bag_matmul(offsets: Tensor, index: Tensor, values: Tensor, table: Tensor) -> Tensor:
    """``M @ table`` for the CSR matrix ``M`` (row offsets, column index, values): a weighted
    ``embedding_bag`` (on CPU 3-4x faster than torch's CSR product; rows need not be sorted)."""
    return nn.functional.embedding_bag(
        index, table, offsets, per_sample_weights=values, mode="sum", include_last_offset=True
    )
