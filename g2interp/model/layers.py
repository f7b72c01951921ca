"""Gemma 2 / Gemma 3 decoder components with TransformerLens hook points.

Every numerical convention follows ``transformers``' ``modeling_gemma2.py`` / ``modeling_gemma3.py``;
each is applied exactly once, where a one-line comment says why. Shapes: B batch, Q query positions,
K key positions, H query heads, G key/value heads, D head width, M model width, F MLP width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from g2interp.config import AttentionType, ModelConfig
from g2interp.model.attention import AttentionMasks, attend
from g2interp.model.hook_points import HookPoint, listened
from g2interp.model.kernels import Linear
from g2interp.model.kv_cache import KVCache


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: fp32 statistics, scale ``(1 + weight)``; hooks as TransformerLens's RMSNorm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # stored as in the checkpoint: the scale minus one
        self.hook_scale = HookPoint()  # [..., 1]: sqrt(mean(x^2) + eps)
        self.hook_normalized = HookPoint()  # [..., dim]: x / scale, fp32

    def forward(self, x: Tensor) -> Tensor:
        fp32 = x.dtype == torch.float32  # transformers normalises in fp32 whatever the model dtype
        x32 = x if fp32 else x.float()
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if listened(self.hook_scale):
            inv_rms = self.hook_scale(inv_rms.reciprocal()).reciprocal()
        normed = self.hook_normalized(x32 * inv_rms)
        w = self.weight if self.weight.dtype == torch.float32 else self.weight.float()
        out = normed * (1.0 + w)  # Gemma checkpoints store w - 1
        return out if fp32 else out.type_as(x)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE (transformers' ``default``/``linear`` rope types); cos/sin computed in fp32."""

    def __init__(self, d_head: int, theta: float, scaling: float):
        super().__init__()
        self.d_head, self.theta, self.scaling = d_head, theta, scaling

    def inv_freq(self, device: torch.device) -> Tensor:
        exponent = torch.arange(0, self.d_head, 2, dtype=torch.int64, device=device).float() / self.d_head
        return 1.0 / (self.theta**exponent) / self.scaling  # linear rope divides positions by the factor

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and the signed sin (see :func:`apply_rope`), [B, Q, 1, D], for ``position_ids`` [B, Q]."""
        freqs_BQd = position_ids[..., None].float() * self.inv_freq(position_ids.device)
        cos_BQd, sin_BQd = freqs_BQd.cos().to(dtype), freqs_BQd.sin().to(dtype)  # both halves share angles
        cos_BQD = torch.cat((cos_BQd, cos_BQd), dim=-1)
        signed_sin_BQD = torch.cat((-sin_BQd, sin_BQd), dim=-1)
        return cos_BQD[:, :, None], signed_sin_BQD[:, :, None]


def apply_rope(x_BQHD: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotate-half convention (first half of the head paired with the second), as Gemma checkpoints use.

    ``x * cos + cat(-x2, x1) * sin`` with the minus moved onto the first half of ``signed_sin``:
    flipping a sign is exact, so the result is the same bits with one pass less.
    """
    x1, x2 = x_BQHD.chunk(2, dim=-1)
    return x_BQHD * cos + torch.cat((x2, x1), dim=-1) * signed_sin


class Attention(nn.Module):
    """Grouped-query attention with optional QK-norm, soft-capping and a sliding window."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.attn_type = cfg.layer_types[layer]
        self.window = cfg.sliding_window if self.attn_type is AttentionType.SLIDING else None
        self.scale = cfg.query_pre_attn_scalar**-0.5  # Gemma scales by query_pre_attn_scalar, not d_head
        self.softcap = cfg.attn_logit_softcap
        self.split = (cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head)
        # q, k and v projections fused into one matmul (rows: q, then k, then v), as the loaders assemble it
        self.qkv_proj = Linear(cfg.d_model, sum(self.split))
        self.o_proj = Linear(cfg.n_heads * cfg.d_head, cfg.d_model)
        if cfg.use_qk_norm:
            self.q_norm = RMSNorm(cfg.d_head, cfg.rms_norm_eps)  # hooks see [B*Q*H, D] as in TransformerLens
            self.k_norm = RMSNorm(cfg.d_head, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.hook_q = HookPoint()  # [B, Q, H, D]
        self.hook_k = HookPoint()  # [B, K, G, D]
        self.hook_v = HookPoint()  # [B, K, G, D]
        self.hook_rot_q = HookPoint()  # [B, Q, H, D]
        self.hook_rot_k = HookPoint()  # [B, K, G, D]
        self.hook_attn_scores = HookPoint()  # [B, H, Q, K], masked entries -inf
        self.hook_pattern = HookPoint()  # [B, H, Q, K]
        self.hook_z = HookPoint()  # [B, Q, H, D]

    @property
    def W_Q(self) -> Tensor:
        """Query projection [H*D, M] (a view into the fused q/k/v weight)."""
        return self.qkv_proj.weight[: self.split[0]]

    @property
    def W_K(self) -> Tensor:
        """Key projection [G*D, M]."""
        return self.qkv_proj.weight[self.split[0] : self.split[0] + self.split[1]]

    @property
    def W_V(self) -> Tensor:
        """Value projection [G*D, M]."""
        return self.qkv_proj.weight[self.split[0] + self.split[1] :]

    def forward(
        self,
        x_BQM: Tensor,
        rope: tuple[Tensor, Tensor],
        masks: AttentionMasks,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        B, Q, _ = x_BQM.shape
        q_BQx, k_BQx, v_BQx = self.qkv_proj(x_BQM).split(self.split, dim=-1)
        q_BQHD = self.hook_q(q_BQx.reshape(B, Q, self.n_heads, self.d_head))
        k_BQGD = self.hook_k(k_BQx.reshape(B, Q, self.n_kv_heads, self.d_head))
        v_BQGD = self.hook_v(v_BQx.reshape(B, Q, self.n_kv_heads, self.d_head))
        if self.q_norm is not None:  # Gemma 3 normalises each head before RoPE
            q_BQHD = _head_norm(self.q_norm, q_BQHD)
            k_BQGD = _head_norm(self.k_norm, k_BQGD)
        cos, sin = rope
        q_BQHD = self.hook_rot_q(apply_rope(q_BQHD, cos, sin))
        k_BQGD = self.hook_rot_k(apply_rope(k_BQGD, cos, sin))
        q_BHQD = q_BQHD.transpose(1, 2)
        k_BGKD, v_BGKD = k_BQGD.transpose(1, 2), v_BQGD.transpose(1, 2)
        if kv_cache is not None:
            k_BGKD, v_BGKD = kv_cache.update(layer, k_BGKD, v_BGKD)
        explicit = listened(self.hook_attn_scores) or listened(self.hook_pattern)
        z_BHQD = attend(
            q_BHQD,
            k_BGKD,
            v_BGKD,
            masks.for_window(self.window),
            scale=self.scale,
            softcap=self.softcap,
            explicit=explicit,
            scores_hook=self.hook_attn_scores,
            pattern_hook=self.hook_pattern,
        )
        z_BQHD = self.hook_z(z_BHQD.transpose(1, 2))
        return self.o_proj(z_BQHD.reshape(B, Q, self.n_heads * self.d_head))


def _head_norm(norm: RMSNorm, x_BQHD: Tensor) -> Tensor:
    """``norm`` over each head's vector; its hooks, when listened to, see [B*Q*H, D] as TransformerLens's."""
    if listened(norm.hook_scale) or listened(norm.hook_normalized):
        return norm(x_BQHD.reshape(-1, x_BQHD.shape[-1])).view(x_BQHD.shape)
    return norm(x_BQHD)  # the same per-vector numbers, without copying the q/k view into [B*Q*H, D]


class GatedMLP(nn.Module):
    """GeGLU: ``down(gelu_tanh(gate(x)) * up(x))``; hooks named as TransformerLens's gated MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_mlp = cfg.d_mlp
        # gate and up projections fused into one matmul (rows: gate, then up)
        self.gate_up_proj = Linear(cfg.d_model, 2 * cfg.d_mlp)
        self.down_proj = Linear(cfg.d_mlp, cfg.d_model)
        self.hook_pre = HookPoint()  # [B, Q, F]: gate pre-activation
        self.hook_pre_linear = HookPoint()  # [B, Q, F]: up projection
        self.hook_post = HookPoint()  # [B, Q, F]: gelu(gate) * up

    @property
    def W_gate(self) -> Tensor:
        """Gate projection [F, M] (a view into the fused gate/up weight)."""
        return self.gate_up_proj.weight[: self.d_mlp]

    @property
    def W_in(self) -> Tensor:
        """Up projection [F, M]."""
        return self.gate_up_proj.weight[self.d_mlp :]

    def forward(self, x_BQM: Tensor) -> Tensor:
        gate_BQF, up_BQF = self.gate_up_proj(x_BQM).split(self.d_mlp, dim=-1)
        gate_BQF, up_BQF = self.hook_pre(gate_BQF), self.hook_pre_linear(up_BQF)
        post_BQF = self.hook_post(F.gelu(gate_BQF, approximate="tanh") * up_BQF)  # Gemma's gelu_pytorch_tanh
        return self.down_proj(post_BQF)


class GemmaBlock(nn.Module):
    """Pre- and post-norms around attention and around the MLP (Gemma 2 / 3 sandwich norm)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        eps = cfg.rms_norm_eps
        self.ln1 = RMSNorm(cfg.d_model, eps)
        self.attn = Attention(cfg, layer)
        self.ln1_post = RMSNorm(cfg.d_model, eps)
        self.ln2 = RMSNorm(cfg.d_model, eps)
        self.mlp = GatedMLP(cfg)
        self.ln2_post = RMSNorm(cfg.d_model, eps)
        self.hook_resid_pre = HookPoint()  # [B, Q, M]
        # [B, Q, M], after the post-attention norm (TransformerLens, Gemma Scope)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()  # [B, Q, M]
        # [B, Q, M], the MLP's input after its pre-norm (Gemma Scope 2's and SAELens's transcoder input)
        self.hook_mlp_in = HookPoint()
        self.hook_mlp_out = HookPoint()  # [B, Q, M], after the post-MLP norm
        self.hook_resid_post = HookPoint()  # [B, Q, M]

    def forward(
        self,
        resid_BQM: Tensor,
        rope: tuple[Tensor, Tensor],
        masks: AttentionMasks,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        resid_BQM = self.hook_resid_pre(resid_BQM)
        attn_out = self.hook_attn_out(
            self.ln1_post(self.attn(self.ln1(resid_BQM), rope, masks, kv_cache, self.layer))
        )
        resid_BQM = self.hook_resid_mid(resid_BQM + attn_out)
        mlp_out = self.hook_mlp_out(self.ln2_post(self.mlp(self.hook_mlp_in(self.ln2(resid_BQM)))))
        return self.hook_resid_post(resid_BQM + mlp_out)


def embed_scale(d_model: int, dtype: torch.dtype) -> Tensor:
    """sqrt(d_model) rounded to the model dtype, as transformers' Gemma embedding multiplies."""
    return torch.tensor(math.sqrt(d_model)).to(dtype)
