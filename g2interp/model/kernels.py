"""``x @ W.T`` with the kernel picked by shape: the few-row products of decoding.

A weight ``W [O, K]`` is stored as ``nn.Linear`` keeps it. ``F.linear(x, W)`` hands BLAS the product
``x [N, K] @ W.T``; for a few rows (2 to 7: a decode step of a small batch) MKL's kernel for that
layout is several times slower than for the same product computed as ``W @ x.T`` (one long output
column per row of ``x``): measured on a 2-core AMD EPYC (fp32, MKL, one thread), the tied 262,144 x 640
unembedding at 4 rows takes 109 ms through ``F.linear`` and 55 ms as ``W @ x.T``; the blocks' weights
at 4 rows 50 ms against 35 ms per step. A single row runs the same matrix-vector kernel either way, and
from 8 rows on ``F.linear``'s blocked kernel is at least as fast, so those stay as they are. In bf16 the two
kernels take the same time (the unembedding at 4 rows: 135 ms against 145 ms), and on CUDA cuBLAS
handles the shape itself, so the choice is made for fp32 on the CPU only.

One row of a tall weight (more outputs than inputs: the unembedding, the fused q/k/v and gate/up
products) is computed as two equal rows the same way: in a decode step the weights stream from memory,
and the matrix-vector kernel reads a tall ``W`` more slowly than the two-column product does (the
unembedding 44 ms against 31 ms on the same machine, two threads; the blocks' tall products 17 ms
against 11 ms per step); for wide weights (``down_proj``) the matrix-vector kernel stays ahead.
(``bench/generate.py`` times both choices per product on the machine it runs on.)

Faster still for those few rows is oneDNN's product with the weight reordered once into its blocked
layout (the blocks' products at one row 20.9 -> 16.4 ms per step, at four rows 22.3 -> 19.1 ms, same
machine): a :class:`Linear` keeps that copy, built at its first few-row product without gradients
(about 5 ms per MB of weight, the copy as large as the weight) and rebuilt when the weight changes
through PyTorch; see :class:`Linear` for what it does not see.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

T = TypeVar("T")

FEW_ROWS = range(2, 8)
"""Row counts computed as ``W @ x.T`` (fp32, CPU)."""


PACK_ROWS_HINT = 4
"""The row count oneDNN lays a reordered weight out for: a layout for one row runs two to seven rows at
half speed; one for 2 to 8 rows runs every count from 1 to 7 alike."""


def as_w_xt(n_rows: int, x: Tensor, W_OK: Tensor) -> bool:
    """Whether :func:`linear` computes ``n_rows`` rows of ``x`` times ``W_OK.T`` as ``W @ x.T``."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    return n_rows in FEW_ROWS or (n_rows == 1 and W_OK.shape[0] >= W_OK.shape[1])


def w_xt(x_NK: Float[Tensor, "*rows k"], W_OK: Float[Tensor, "o k"]) -> Float[Tensor, "*rows o"]:
    """``x @ W.T`` computed as ``W @ x.T`` (one row as two equal ones: see the module docstring)."""
    n_rows = math.prod(x_NK.shape[:-1])
    x_RK = x_NK.reshape(n_rows, -1)
    if n_rows == 1:
        x_RK = x_RK.expand(2, -1)  # the two-column kernel streams a tall W faster than the matrix-vector one
    # both copies are of a few rows; the kernel is slow when x.T is row-major, i.e. x is not
    out_OR = torch.mm(W_OK, x_RK.contiguous().T)
    return out_OR[:, :n_rows].T.contiguous().reshape(*x_NK.shape[:-1], W_OK.shape[0])


def linear(x_NK: Float[Tensor, "*rows k"], W_OK: Float[Tensor, "o k"]) -> Float[Tensor, "*rows o"]:
    """``x @ W.T`` (no bias); few-row fp32 products on the CPU as ``W @ x.T``, whose kernel is faster there.

    The two kernels sum in different orders: the results agree to float rounding (a few 1e-7 relative).
    """
    if as_w_xt(math.prod(x_NK.shape[:-1]), x_NK, W_OK):
        return w_xt(x_NK, W_OK)
    return F.linear(x_NK, W_OK)


class WeightKey(NamedTuple):
    """What identifies a weight's contents as far as PyTorch tracks them (copies are keyed by it)."""

    data_ptr: int
    version: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, W: Tensor) -> WeightKey:
        return cls(W.data_ptr(), W._version, tuple(W.shape), W.dtype, W.device)


def weight_copy(owner: object, attr: str, W: Tensor, build: Callable[[Tensor], T]) -> T:
    """``build(W)``, kept in ``owner.attr`` as ``(WeightKey, copy)`` and rebuilt when ``W``'s key changes.

    The decoding copies (reordered blocks' weights, the greedy screen) are held this way. The
    attribute is read once, so a thread replacing it meanwhile cannot hand this one a ``None``.
    """
    key, held = WeightKey.of(W), getattr(owner, attr)
    if held is None or held[0] != key:
        setattr(owner, attr, None)  # free the stale copy before building the new one
        held = key, build(W.detach())
        setattr(owner, attr, held)
    return held[1]


def packable(x: Tensor, W_OK: Tensor) -> bool:
    """Whether a product may run on a reordered oneDNN copy of ``W``: few fp32 CPU rows, no gradient."""
    return (
        x.device.type == "cpu"
        and x.dtype == W_OK.dtype == torch.float32
        and math.prod(x.shape[:-1]) < FEW_ROWS.stop
        and not (torch.is_grad_enabled() and (x.requires_grad or W_OK.requires_grad))  # it has no backward
        and torch.backends.mkldnn.is_available()
    )


class Linear(nn.Linear):
    """A bias-free ``nn.Linear`` (same parameter, same state-dict key) whose product is :func:`linear`.

    With :attr:`pack_few_rows`, products of fewer than 8 rows without gradients (decoding) run on a
    reordered oneDNN copy of the weight, rebuilt whenever the weight changes as PyTorch tracks it:
    in-place edits (under ``torch.no_grad()``), ``load_state_dict``, a new tensor, ``.to()``. Edits
    through ``weight.data`` are not tracked; call :meth:`clear_packed` after those.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.pack_few_rows = True
        self._packed: tuple[WeightKey, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.pack_few_rows and packable(x, self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), None, "none", [], "")
        return linear(x, self.weight)

    def packed_weight(self) -> Tensor:
        """The reordered oneDNN copy of the weight few-row products run on (built if needed)."""
        return weight_copy(
            self, "_packed", self.weight, lambda W: torch.ops.mkldnn._reorder_linear_weight(W, PACK_ROWS_HINT)
        )

    def clear_packed(self) -> None:
        """Drop the reordered copy (rebuilt at the next few-row product)."""
        self._packed = None

    def _apply(self, fn, recurse=True):
        self._packed = None  # .to(), .half(), ...: the copy belongs to the old tensor
        return super()._apply(fn, recurse)

    def __getstate__(self):
        return {**self.__dict__, "_packed": None}  # deepcopy / pickle: the opaque copy is rebuilt instead
