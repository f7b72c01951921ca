"""Straight-through estimators of JumpReLU and of the Heaviside step (Rajamanoharan et al. 2024).

Both are piecewise constant in the threshold θ, so their true gradient wrt θ is zero almost everywhere.
The estimators replace the Dirac delta at ``z = θ`` by a rectangle kernel of width ε (the bandwidth):

    ∂/∂θ JumpReLU_θ(z) := -(θ/ε) · K((z - θ)/ε)        ∂/∂θ H(z - θ) := -(1/ε) · K((z - θ)/ε)

with ``K(u) = 1[-1/2 < u < 1/2]``. JumpReLU passes the ordinary gradient ``1[z > θ]`` to ``z``; the step
passes none (its L0 penalty trains the thresholds only). These match Gemma Scope's pseudo-code and
SAELens's ``JumpReLU`` / ``Step`` with ``ste_to_input=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


def rectangle(u: Tensor) -> Tensor:
    """The kernel ``K(u) = 1[-1/2 < u < 1/2]`` in ``u``'s dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _threshold_grad(ctx: Any, grad_out: Tensor, height: Tensor | float) -> Tensor | None:
    """``-(height/ε) · K((z - θ)/ε) · grad_out`` summed over the batch dims to θ's shape (None if unneeded)."""
    if not ctx.needs_input_grad[1]:
        return None
    pre, threshold = ctx.saved_tensors
    grad_BF = -(height / ctx.bandwidth) * rectangle((pre - threshold) / ctx.bandwidth) * grad_out
    return grad_BF.reshape(-1, grad_BF.shape[-1]).sum(0).reshape(threshold.shape)


class JumpReLU(torch.autograd.Function):
    """``z · 1[z > θ]``; gradient ``1[z > θ]`` to ``z`` and the rectangle-kernel estimator to ``θ``."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = (pre > threshold).to(grad_out.dtype) * grad_out if ctx.needs_input_grad[0] else None
        return grad_pre, _threshold_grad(ctx, grad_out, threshold), None


class Step(torch.autograd.Function):
    """``1[z > θ]``; no gradient to ``z``, the rectangle-kernel estimator to ``θ``."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor | None, None]:
        return None, _threshold_grad(ctx, grad_out, 1.0), None


def jumprelu(
    pre: Float[Tensor, "*batch d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float
) -> Float[Tensor, "*batch d_sae"]:
    """JumpReLU with the straight-through threshold gradient."""
    return JumpReLU.apply(pre, threshold, bandwidth)


def step(
    pre: Float[Tensor, "*batch d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float
) -> Float[Tensor, "*batch d_sae"]:
    """Heaviside step ``1[pre > threshold]`` with the straight-through threshold gradient."""
    return Step.apply(pre, threshold, bandwidth)
