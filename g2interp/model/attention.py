"""Attention masks and the attention kernel choice (SDPA, FlexAttention with soft-cap, or explicit).

The explicit path materialises scores and pattern; it runs only when ``hook_attn_scores`` or
``hook_pattern`` is listened to, or when logits are soft-capped on a device without FlexAttention.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.hook_points import HookPoint


@dataclass
class AttentionMasks:
    """Masks for one forward pass, built lazily once per window size and shared by the layers.

    Query ``i`` (absolute index ``offset + i``) may see key ``j`` when ``j <= offset + i``,
    ``j > offset + i - window`` (sliding layers: the window counts the query itself, as in
    transformers) and key ``j`` is not padding. A query always sees itself, so padding rows
    stay finite and never leak NaN into the real rows.
    """

    n_queries: int
    n_keys: int
    offset: int
    key_valid_BK: Tensor | None
    device: torch.device
    _cache: dict = field(default_factory=dict, repr=False)

    def for_window(self, window: int | None) -> MaskSpec:
        key = window if window is not None and window < self.n_keys else None
        if key not in self._cache:
            self._cache[key] = self._build(key)
        return self._cache[key]

    def _build(self, window: int | None) -> MaskSpec:
        no_padding = self.key_valid_BK is None or bool(self.key_valid_BK.all())
        if no_padding and window is None:
            if self.offset == 0 and self.n_queries == self.n_keys:
                return MaskSpec(None, causal=True)
            if self.n_queries == 1:  # one decoding step sees every key
                return MaskSpec(None, causal=False)
        q_idx = torch.arange(self.offset, self.offset + self.n_queries, device=self.device)[:, None]
        k_idx = torch.arange(self.n_keys, device=self.device)[None, :]
        allowed_QK = k_idx <= q_idx
        if window is not None:
            allowed_QK = allowed_QK & (k_idx > q_idx - window)
        allowed = allowed_QK[None, None]
        if not no_padding:
            allowed = allowed & self.key_valid_BK[:, None, None, :]
        return MaskSpec(allowed | (k_idx == q_idx)[None, None], causal=False)


@dataclass(frozen=True)
class MaskSpec:
    """Either a boolean mask [B or 1, 1, Q, K] (True = may attend), or None with a causal flag."""

    allowed: Tensor | None
    causal: bool

    def dense(self, n_queries: int, n_keys: int, device: torch.device) -> Tensor:
        if self.allowed is not None:
            return self.allowed
        if self.causal:
            return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril()[None, None]
        return torch.ones(1, 1, n_queries, n_keys, dtype=torch.bool, device=device)


def attend(
    q_BHQD: Tensor,
    k_BGKD: Tensor,
    v_BGKD: Tensor,
    mask: MaskSpec,
    *,
    scale: float,
    softcap: float | None,
    explicit: bool,
    scores_hook: HookPoint,
    pattern_hook: HookPoint,
) -> Tensor:
    """Attention output z [B, H, Q, D]."""
    H, G = q_BHQD.shape[1], k_BGKD.shape[1]
    if explicit or (softcap is not None and not q_BHQD.is_cuda):
        return _explicit(q_BHQD, k_BGKD, v_BGKD, mask, scale, softcap, scores_hook, pattern_hook)
    if softcap is not None:
        return _flex_softcap(q_BHQD, k_BGKD, v_BGKD, mask, scale, softcap)
    return F.scaled_dot_product_attention(
        q_BHQD, k_BGKD, v_BGKD, attn_mask=mask.allowed, is_causal=mask.causal, scale=scale, enable_gqa=H != G
    )


def _explicit(q_BHQD, k_BGKD, v_BGKD, mask, scale, softcap, scores_hook, pattern_hook) -> Tensor:
    H, G = q_BHQD.shape[1], k_BGKD.shape[1]
    if H != G:  # grouped-query attention: each key/value head serves H // G query heads
        k_BGKD = k_BGKD.repeat_interleave(H // G, dim=1)
        v_BGKD = v_BGKD.repeat_interleave(H // G, dim=1)
    scores_BHQK = torch.matmul(q_BHQD, k_BGKD.transpose(-1, -2)) * scale
    if softcap is not None:  # Gemma 2 soft-caps attention logits before masking
        scores_BHQK = torch.tanh(scores_BHQK / softcap) * softcap
    allowed = mask.dense(q_BHQD.shape[2], k_BGKD.shape[2], q_BHQD.device)
    scores_BHQK = scores_hook(scores_BHQK.masked_fill(~allowed, float("-inf")))
    pattern_BHQK = pattern_hook(torch.softmax(scores_BHQK, dim=-1, dtype=torch.float32).to(q_BHQD.dtype))
    return torch.matmul(pattern_BHQK, v_BGKD)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_softcap(q_BHQD, k_BGKD, v_BGKD, mask, scale, softcap, compiled: bool = True) -> Tensor:
    """FlexAttention (CUDA) with a tanh soft-cap ``score_mod``, the masks as a block mask.

    ``compiled=False`` runs FlexAttention's eager reference (any device; used to test the mods).
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, _, Q, _ = q_BHQD.shape
    K = k_BGKD.shape[2]
    allowed = mask.dense(Q, K, q_BHQD.device).expand(B, 1, Q, K)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[b, 0, q_idx, kv_idx]

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / softcap) * softcap

    block_mask = create_block_mask(mask_mod, B, None, Q, K, device=q_BHQD.device)
    return (_compiled_flex() if compiled else flex_attention)(
        q_BHQD,
        k_BGKD,
        v_BGKD,
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q_BHQD.shape[1] != k_BGKD.shape[1],
    )
