"""Incremental decoding with a KV cache: greedy, temperature, top-k and nucleus sampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from g2interp.model.kv_cache import KVCache

if TYPE_CHECKING:
    from g2interp.model.gemma import HookedGemma


class GenerationOutput(NamedTuple):
    """A batch of continuations."""

    tokens: Tensor
    """[B, prompt + new] ids: the (left-padded) prompt followed by the generated ids."""
    new_tokens: list[list[int]]
    """Generated ids per row, up to and including the first EOS."""
    texts: list[str]
    """Decoded continuation per row (empty strings when the model has no tokenizer)."""
    finished: list[bool]
    """Whether each row stopped at an end-of-sequence token."""


def sample_next(logits_BV: Tensor, temperature: float, top_p: float, top_k: int | None, generator) -> Tensor:
    """Next ids [B]: argmax when ``temperature == 0``, else sampled from the filtered softmax."""
    if temperature == 0:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits_BV, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits_BV = logits_BV.masked_fill(drop, float("-inf"))
    probs_BV = logits_BV.softmax(-1)
    return torch.multinomial(probs_BV, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model: HookedGemma,
    prompt: str | Sequence[str] | Tensor,
    max_new_tokens: int = 32,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    stop_at_eos: bool = True,
    attention_mask: Tensor | None = None,
    seed: int | None = None,
) -> GenerationOutput:
    """Continue ``prompt`` (text, texts, or ids [B, Q] left-padded with ``attention_mask``).

    ``temperature=0`` (default) is greedy decoding; otherwise sampling with optional top-k / top-p.
    Rows that emit an EOS stop; the rest continue until ``max_new_tokens``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if isinstance(prompt, Tensor):
        tokens = model._check_tokens(prompt)
        mask = (
            torch.ones_like(tokens) if attention_mask is None else model._check_mask(attention_mask, tokens)
        )
    else:
        tokens, mask = model.tokenize(prompt, padding_side="left")
    B, P = tokens.shape
    total = P + max_new_tokens
    if total > model.cfg.max_position_embeddings:
        raise ValueError(
            f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds max_position_embeddings "
            f"({model.cfg.max_position_embeddings})"
        )
    cfg = model.cfg
    cache = KVCache(cfg.n_layers, B, cfg.n_kv_heads, total, cfg.d_head, model.device, model.dtype)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(seed)
    eos = torch.tensor(cfg.eos_token_ids, device=model.device)
    finished = torch.zeros(B, dtype=torch.bool, device=model.device)
    new = torch.full((B, max_new_tokens), cfg.pad_token_id, dtype=torch.long, device=model.device)
    logits = model(tokens, mask, kv_cache=cache)[:, -1]
    n_done = 0
    for step in range(max_new_tokens):
        next_B = sample_next(logits, temperature, top_p, top_k, generator)
        next_B = torch.where(finished, torch.full_like(next_B, cfg.pad_token_id), next_B)
        new[:, step] = next_B
        n_done = step + 1
        if stop_at_eos:
            finished |= torch.isin(next_B, eos)
            if bool(finished.all()):
                break
        if step + 1 < max_new_tokens:
            step_mask = (
                (~finished | torch.isin(next_B, eos)).long()[:, None]
                if stop_at_eos
                else torch.ones_like(next_B)[:, None]
            )
            logits = model(next_B[:, None], step_mask, kv_cache=cache)[:, -1]
    new = new[:, :n_done]
    rows: list[list[int]] = []
    for row in new.tolist():
        out = []
        for t in row:
            out.append(t)
            if stop_at_eos and t in cfg.eos_token_ids:
                break
        rows.append(out)
    texts = (
        [model.tokenizer.decode(r, skip_special_tokens=True) for r in rows] if model.tokenizer else [""] * B
    )
    return GenerationOutput(torch.cat([tokens, new], dim=1), rows, texts, [bool(f) for f in finished])
