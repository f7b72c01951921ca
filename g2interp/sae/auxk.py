"""The AuxK loss against dead latents (Gao et al. 2024, SAELens's ``calculate_topk_aux_loss``), shared
by every architecture: each token's ``k_aux`` largest pre-activations among the dead latents
reconstruct the residual ``y - ŷ`` through their decoder rows,

    L_aux = min(n_dead / k_aux, 1) · mean_b ‖(y - ŷ)_b - Σ_{j ∈ top-k_aux dead} pre_bj W_dec[j]‖²

with the residual held constant. Its gradient reaches only the dead latents' encoder columns, biases
and decoder rows, and points them at what the live latents miss, so a latent revives with a use
rather than as a copy of the mean input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor


class DeadColumns(NamedTuple):
    """The dead latents and their pre-activations, gathered from a batch's pre-activations."""

    dead_K: Tensor
    """Indices of the dead latents [n_dead]."""
    pre_BK: Tensor
    """Their pre-activations [B, n_dead] (a copy: later in-place work on the batch's leaves it intact)."""


def dead_columns(pre_BF: Tensor, dead_F: Bool[Tensor, " d_sae"] | None) -> DeadColumns | None:
    """The dead latents' columns of ``pre_BF``; None when nothing is dead."""
    dead_K = dead_F.nonzero().squeeze(1) if dead_F is not None else None
    if dead_K is None or dead_K.numel() == 0:
        return None
    return DeadColumns(dead_K, pre_BF[:, dead_K])


class AuxKTerms(NamedTuple):
    """What the AuxK gradients need, computed before the residual is overwritten."""

    dead_K: Tensor
    """Indices of the dead latents [n_dead]."""
    acts_BK: Tensor
    """Their pre-activations [B, n_dead], zero outside each token's ``k_aux`` largest."""
    keep_BK: Tensor | None
    """The top-``k_aux`` selection [B, n_dead] (None: all dead latents, when ``n_dead <= k_aux``)."""
    e_BO: Tensor
    """``Σ acts W_dec[dead] - (y - ŷ)``: the AuxK reconstruction's error [B, d_out]."""
    scale: float
    """``min(n_dead / k_aux, 1)``."""


@torch.no_grad()
def auxk_terms(
    dead: DeadColumns,
    err_BO: Float[Tensor, "batch d_out"],
    W_dec_FO: Float[Tensor, "d_sae d_out"],
    k_aux: int,
) -> AuxKTerms:
    """AuxK over the dead latents' columns (dense; ``err_BO = ŷ - y``)."""
    dead_K, pre_BK = dead
    n_dead = dead_K.numel()
    keep_BK = None
    if k_aux < n_dead:
        keep_BK = torch.zeros_like(pre_BK, dtype=torch.bool)
        keep_BK.scatter_(1, pre_BK.topk(k_aux, dim=1, sorted=False).indices, True)
        pre_BK = pre_BK * keep_BK
    e_BO = torch.addmm(err_BO, pre_BK, W_dec_FO[dead_K])  # ê - (y - ŷ)
    return AuxKTerms(dead_K, pre_BK, keep_BK, e_BO, min(n_dead / k_aux, 1.0))


@torch.no_grad()
def add_auxk_grads(sae: torch.nn.Module, x_BD: Tensor, terms: AuxKTerms, coefficient: float) -> float:
    """Add ``coefficient · L_aux``'s gradients to ``sae``'s ``W_dec``, ``W_enc`` and ``b_enc`` grads;
    returns ``L_aux`` (before its coefficient)."""
    dead_K, acts_BK, keep_BK, e_BO, scale = terms
    B = x_BD.shape[0]
    aux_loss = scale * float(e_BO.pow(2).sum()) / B
    g_BO = e_BO.mul_(coefficient * scale * 2.0 / B)
    grad_BK = g_BO @ sae.W_dec[dead_K].T
    if keep_BK is not None:
        grad_BK.mul_(keep_BK)
    sae.W_dec.grad.index_add_(0, dead_K, acts_BK.T @ g_BO)
    sae.W_enc.grad.index_add_(1, dead_K, x_BD.T @ grad_BK)
    sae.b_enc.grad.index_add_(0, dead_K, grad_BK.sum(0))
    return aux_loss


def auxk_reference(
    pre_BF: Tensor, recon_BO: Tensor, y_BO: Tensor, W_dec_FO: Tensor, dead_F: Tensor, k_aux: int
) -> Tensor:
    """``L_aux`` through autograd (the tests' reference): the residual detached, top-k by value."""
    dead_K = dead_F.nonzero().squeeze(1)
    if dead_K.numel() == 0:
        return pre_BF.new_zeros(())
    pre_BK = pre_BF[:, dead_K]
    k = min(k_aux, dead_K.numel())
    keep_BK = torch.zeros_like(pre_BK, dtype=torch.bool)
    keep_BK.scatter_(1, pre_BK.detach().topk(k, dim=1).indices, True)
    residual_BO = (y_BO - recon_BO).detach()
    aux_BO = (pre_BK * keep_BK) @ W_dec_FO[dead_K]
    scale = min(dead_K.numel() / k_aux, 1.0)
    return scale * (aux_BO - residual_BO).pow(2).sum(-1).mean()
