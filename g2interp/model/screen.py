"""Greedy decoding's argmax without streaming the fp32 unembedding: a half-precision screen, then exact rows.

A greedy step needs only the largest logit, yet the tied unembedding (262,144 x 640 in fp32, 671 MB,
63 % of a Gemma 3 270M decode step's bytes) is the step's largest read. :class:`ScreenedUnembedding`
keeps a copy of it in fp16 (half the bytes) packed for FBGEMM's fp16 GEMM, which multiplies fp32
activations by the fp16 weights and accumulates in fp32, so the screen's error on row ``i`` has a bound
that is known in advance up to the norm of the input::

    |screen_i - logit_i| <= slack_i * ||x||_2,
    slack_i = ||W16_i - W_i||_2 + gamma_K * (||W16_i||_2 + ||W_i||_2)

(Cauchy-Schwarz on the rounding of the weights, plus the fp32 summation error of either product,
``gamma_K`` about ``K * 2**-24``, with ``W16`` the weights as the packed copy holds them). Every row whose
screened logit comes within ``2 * max(slack) * ||x||`` of the best one may be the argmax; those rows,
usually one to a few, are recomputed from the fp32 weights, and the largest wins, ties to the lowest id
as ``argmax`` breaks them. The result is the argmax of fp32 logits: what a full fp32 product returns,
up to that product's own summation order. On a 2-core AMD EPYC (two threads) the screen takes 11 ms
where the fp32 product takes 28 ms.

The copy (half the weight's bytes) is built on first use (about 2 s for Gemma 3 270M on that
machine: FBGEMM packs on one thread, so the rows are packed in one chunk per thread) and rebuilt when the weight changes through PyTorch
(in-place edits under ``torch.no_grad()``, ``load_state_dict``, a new tensor): edits made through
``weight.data`` bypass PyTorch's version counter, so after those call
:meth:`HookedGemma.clear_decode_cache <g2interp.model.gemma.HookedGemma.clear_decode_cache>`.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

log = logging.getLogger(__name__)

MAX_CANDIDATES = 4096
"""More candidates than this in a row (inputs with a huge norm) and the row takes the full fp32 product."""


def supported(W_VM: Tensor) -> bool:
    """Whether a screen can serve this weight: fp32 on the CPU with FBGEMM's fp16 GEMM in this build."""
    return (
        W_VM.device.type == "cpu"
        and W_VM.dtype == torch.float32
        and W_VM.dim() == 2
        and hasattr(torch.ops.quantized, "linear_prepack_fp16")
        and "fbgemm" in torch.backends.quantized.supported_engines
    )


class ScreenedUnembedding:
    """The fp16 screen of one fp32 unembedding ``W [V, M]`` and each row's error bound."""

    def __init__(self, W_VM: Float[Tensor, "vocab d_model"]):
        if not supported(W_VM):
            raise ValueError(
                f"a screened unembedding needs a 2-D fp32 CPU weight and FBGEMM; got {W_VM.dtype} "
                f"{tuple(W_VM.shape)} on {W_VM.device} (engines: {torch.backends.quantized.supported_engines})"
            )
        W_VM = W_VM.detach()
        self.n_rows = W_VM.shape[0]
        lo, hi = W_VM.aminmax()
        fp16_max = torch.finfo(torch.float16).max
        if not -fp16_max <= float(lo) <= float(hi) <= fp16_max:  # out of fp16's range, or NaN
            # FBGEMM would clamp such weights in place; every row is a candidate: the full product
            self.packed, self.slack = [], math.inf
            return
        chunks = W_VM.split(-(-W_VM.shape[0] // max(1, torch.get_num_threads())))
        log.info("packing an fp16 copy of the %s unembedding for greedy decoding", tuple(W_VM.shape))
        with ThreadPoolExecutor(len(chunks)) as pool:  # FBGEMM packs on one thread; chunks pack in parallel
            self.packed = list(pool.map(_pack, chunks))
        gamma = (W_VM.shape[1] + 2) * 2.0**-24 * 1.01  # fp32 summation of K products, either kernel
        slack = max(float(_slack(W_vm, gamma).max()) for W_vm in W_VM.split(16384))
        self.slack = slack if math.isfinite(slack) else math.inf

    def screen(self, x_BM: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch vocab"]:
        """The logits of the fp16 weights, summed in fp32."""
        x_BM = x_BM.contiguous()
        return torch.cat([torch.ops.quantized.linear_dynamic_fp16(x_BM, p) for p in self.packed], dim=-1)

    def candidates(self, x_BM: Float[Tensor, "batch d_model"]) -> Bool[Tensor, "batch vocab"]:
        """Rows [B, V] that may hold each input's largest fp32 logit."""
        if not self.packed:
            return torch.ones(x_BM.shape[0], self.n_rows, dtype=torch.bool, device=x_BM.device)
        screen_BV = self.screen(x_BM)
        # both the true argmax and the screen's best lie within slack * ||x|| of their screened values
        margin_B1 = 2 * self.slack * x_BM.double().norm(dim=-1, keepdim=True) * (1 + 1e-6)
        lowest_B1 = (screen_BV.amax(dim=-1, keepdim=True).double() - margin_B1).float()
        lowest_B1 = torch.nextafter(lowest_B1, torch.full_like(lowest_B1, -math.inf))  # round down
        return screen_BV >= lowest_B1

    def argmax(
        self,
        x_BM: Float[Tensor, "batch d_model"],
        W_VM: Float[Tensor, "vocab d_model"],
        softcap: float | None = None,
    ) -> Int[Tensor, " batch"]:
        """``argmax(softcap(x @ W.T))`` per row, from the screen and the candidates' fp32 rows of ``W``.

        The soft-cap ``tanh(l / c) * c`` keeps the order of the logits but can round neighbours to one
        value, which ``argmax`` then breaks to the lowest id: it is applied to the candidates too, and
        a row whose best logit exceeds ``4 c`` (where tanh flattens) takes the full product.
        """
        cand_BV = self.candidates(x_BM)
        out = torch.empty(x_BM.shape[0], dtype=torch.long, device=x_BM.device)
        for b, cand_V in enumerate(cand_BV):
            ids = cand_V.nonzero()[:, 0]
            logits_C = None
            if ids.numel() <= MAX_CANDIDATES and bool(torch.isfinite(x_BM[b]).all()):
                logits_C = F.linear(x_BM[b], W_VM.index_select(0, ids))
                if softcap is not None:
                    logits_C = None if logits_C.max() > 4 * softcap else _cap(logits_C, softcap)
            if logits_C is None:
                log.debug("screen: %d candidates, full product for row %d", ids.numel(), b)
                logits_V = F.linear(x_BM[b], W_VM)
                out[b] = (logits_V if softcap is None else _cap(logits_V, softcap)).argmax()
            else:
                out[b] = ids[logits_C.argmax()]  # ids ascend, so ties go to the lowest id as argmax's
        return out


def _pack(W_VM: Tensor) -> Tensor:
    return torch.ops.quantized.linear_prepack_fp16(W_VM, None)


def _slack(W_VM: Tensor, gamma: float) -> Tensor:
    """Each row's error bound per unit of input norm.

    FBGEMM multiplies by the weights rounded to fp16 (to nearest: ``W.half()`` in range). The
    difference of two close floats is exact; the norms' own fp32 rounding (K * 2**-24 relative at
    most) is covered by the 1 % added.
    """
    W16_VM = W_VM.half().float()
    return ((W16_VM - W_VM).norm(dim=1) + gamma * (W16_VM.norm(dim=1) + W_VM.norm(dim=1))) * 1.01


def _cap(logits: Tensor, cap: float) -> Tensor:
    return torch.tanh(logits / cap) * cap  # as HookedGemma.unembed soft-caps
