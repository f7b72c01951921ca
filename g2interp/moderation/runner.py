"""Runs templated texts through a model: the shared preamble once (cached), each text part once.

Everything the scorers need comes out of one prefix forward per batch: the KV cache that policy suffixes
continue from (generative scoring), and residual-stream activations over the text part (probe features).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from g2interp.model.gemma import HookedGemma
from g2interp.model.kv_cache import KVCache
from g2interp.moderation.template import EncodedText


class PrefixRun(NamedTuple):
    """One batch after its text parts have run."""

    cache: KVCache
    """Keys/values of preamble + text parts (rows right-padded), room left for a suffix."""
    lengths_B: Tensor
    """Real ids in each row's text part (the rest of the row is padding)."""
    acts: dict[str, Tensor]
    """Requested hook name -> [B, T, M] over the text-part positions only."""
    resid_BTM: Tensor
    """Residual stream after the last block run, over the text-part positions."""


def yes_probability(
    model: HookedGemma, resid_BM: Float[Tensor, "batch d_model"], yes_id: int, no_id: int
) -> Float[Tensor, " batch"]:
    """ShieldGemma's score: softmax over the 'Yes' and 'No' logits, P(Yes), from the final residual.

    Only the two unembedding rows are applied: the same numbers as the full logits (final norm,
    tied/untied unembedding and Gemma 2's soft-cap act per token), without the 262k-wide product.
    """
    x_BM = model.ln_final(resid_BM)
    logits_B2 = torch.nn.functional.linear(x_BM, model.W_U[[yes_id, no_id]])
    cap = model.cfg.final_logit_softcap
    if cap is not None:  # Gemma 2 soft-caps output logits, elementwise
        logits_B2 = torch.tanh(logits_B2 / cap) * cap
    return logits_B2.float().softmax(-1)[:, 0]


def length_buckets(
    encoded: Sequence[EncodedText], batch_size: int, max_batch_tokens: int
) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (sorted), at most ``batch_size`` rows and about
    ``max_batch_tokens`` padded text-part ids each; grouped by template kind."""
    for kind in (False, True):
        order = sorted(
            (i for i, e in enumerate(encoded) if e.is_response == kind),
            key=lambda i: len(encoded[i].ids),
        )
        batch: list[int] = []
        for i in order:
            width = len(encoded[i].ids) - encoded[i].n_shared
            if batch and (len(batch) >= batch_size or width * (len(batch) + 1) > max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch


class PrefixRunner:
    """Runs batches of encoded texts; the preamble's keys/values are computed once per kind and copied."""

    def __init__(self, model: HookedGemma):
        self.model = model
        self._preambles: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}

    def _preamble_kv(self, ids: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        if ids not in self._preambles:
            cfg = self.model.cfg
            cache = KVCache(
                cfg.n_layers, 1, cfg.n_kv_heads, len(ids), cfg.d_head, self.model.device, self.model.dtype
            )
            tokens = torch.tensor([ids], device=self.model.device)
            with torch.no_grad():
                self.model(tokens, kv_cache=cache, stop_at_layer=cfg.n_layers)
            self._preambles[ids] = (cache.k_LBGKD[:, 0].clone(), cache.v_LBGKD[:, 0].clone())
        return self._preambles[ids]

    def run(
        self,
        batch: Sequence[EncodedText],
        *,
        hooks: Sequence[str] = (),
        stop_at_layer: int | None = None,
        extra_len: int = 0,
    ) -> PrefixRun:
        """Run the text parts of ``batch`` (one kind) after the cached preamble.

        ``stop_at_layer``: blocks to run (all by default); ``extra_len``: cache room for a suffix.
        Rows are right-padded, so each row's activations equal running it alone.
        """
        model, cfg = self.model, self.model.cfg
        n_shared = batch[0].n_shared
        preamble = batch[0].ids[:n_shared]
        if any(e.ids[:n_shared] != preamble or e.n_shared != n_shared for e in batch):
            raise ValueError("a batch must hold texts of one template kind (the same preamble)")
        parts = [e.ids[n_shared:] for e in batch]
        B, T = len(parts), max(len(p) for p in parts)
        device = model.device
        tokens_BT = torch.full((B, T), cfg.pad_token_id, dtype=torch.long)
        mask_BT = torch.zeros((B, T), dtype=torch.long)
        for b, part in enumerate(parts):
            tokens_BT[b, : len(part)] = torch.tensor(part, dtype=torch.long)
            mask_BT[b, : len(part)] = 1
        k_LGPD, v_LGPD = self._preamble_kv(preamble)
        cache = KVCache(
            cfg.n_layers, B, cfg.n_kv_heads, n_shared + T + extra_len, cfg.d_head, device, model.dtype
        )
        cache.k_LBGKD[:, :, :, :n_shared] = k_LGPD[:, None]
        cache.v_LBGKD[:, :, :, :n_shared] = v_LGPD[:, None]
        cache.key_valid_BK[:, :n_shared] = True
        cache.positions_B[:] = n_shared
        cache.length = n_shared
        acts: dict[str, Tensor] = {}

        def save(tensor: Tensor, hook) -> None:
            acts[hook.name] = tensor.detach()

        n_blocks = cfg.n_layers if stop_at_layer is None else stop_at_layer
        with torch.no_grad(), model.hooks(fwd_hooks=[(name, save) for name in hooks]):
            resid_BTM = model(
                tokens_BT.to(device), mask_BT.to(device), stop_at_layer=n_blocks, kv_cache=cache
            )
        return PrefixRun(cache, mask_BT.sum(1).to(device), acts, resid_BTM)
