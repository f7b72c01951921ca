"""A preallocated key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of every layer for ``max_len`` positions, filled left to right.

    ``key_valid`` [B, max_len] marks real (non-padding) positions; ``positions`` [B] counts the
    real tokens seen so far per row (the next token's RoPE position).
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        d_head: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        shape = (n_layers, batch, n_kv_heads, max_len, d_head)
        self.k_LBGKD = torch.zeros(shape, device=device, dtype=dtype)
        self.v_LBGKD = torch.zeros(shape, device=device, dtype=dtype)
        self._layers = [(self.k_LBGKD[i], self.v_LBGKD[i]) for i in range(n_layers)]  # views, made once
        self.key_valid_BK = torch.zeros(batch, max_len, device=device, dtype=torch.bool)
        self.positions_B = torch.zeros(batch, device=device, dtype=torch.long)
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k_BGQD: Tensor, v_BGQD: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's keys/values for ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k_BGQD.shape[2]
        k_BGKD, v_BGKD = self._layers[layer]
        k_BGKD[:, :, start:end] = k_BGQD
        v_BGKD[:, :, start:end] = v_BGQD
        return k_BGKD[:, :, :end], v_BGKD[:, :, :end]

    def reserve(self, valid_BQ: Tensor) -> None:
        """Record the validity of the next ``Q`` positions before a forward pass writes them."""
        n = valid_BQ.shape[1]
        if self.length + n > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions; {self.length} used, {n} more requested"
            )
        self.key_valid_BK[:, self.length : self.length + n] = valid_BQ

    def advance(self, valid_BQ: Tensor) -> None:
        """Mark the positions written by the last forward pass as used."""
        self.length += valid_BQ.shape[1]
        self.positions_B += valid_BQ.sum(dim=1)
