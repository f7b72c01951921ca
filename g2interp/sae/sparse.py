"""Small tensor helpers the hand-written training gradients share: gradient buffers and CSR matrices."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


def grad_buffer(param: nn.Parameter) -> Tensor:
    """``param.grad``, allocated (zeros) on first use, for kernels that write gradients in place."""
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    return param.grad


def csr(offsets: Tensor, index: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR matrix built from indices that are valid by construction (no invariant checks, no beta warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(offsets, index, values, size=size, check_invariants=False)


def offsets(sorted_index: Tensor, n: int) -> Tensor:
    """CSR row offsets [n + 1] from a sorted row index per stored element."""
    counts = torch.bincount(sorted_index, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])
