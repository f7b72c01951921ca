"""Incremental decoding with a KV cache: greedy, temperature, top-k and nucleus sampling.

One decode loop (:func:`_decode_steps`) serves both :func:`generate` (a whole batch at once) and
:func:`generate_stream` (one prompt, token by token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

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


def _prepare(
    model: HookedGemma,
    prompt: str | Sequence[str] | Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    attention_mask: Tensor | None,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]],
) -> tuple[Tensor, Tensor]:
    """Validate the decoding arguments; the prompt's ids [B, P] and attention mask [B, P]."""
    model.resolve_hook_names([name for name, _ in fwd_hooks if isinstance(name, str)])
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if isinstance(prompt, Tensor):
        tokens_BP = model._check_tokens(prompt)
        mask_BP = (
            torch.ones_like(tokens_BP)
            if attention_mask is None
            else model._check_mask(attention_mask, tokens_BP)
        )
    else:
        tokens_BP, mask_BP = model.tokenize(prompt, padding_side="left")
    P = tokens_BP.shape[1]
    if P + max_new_tokens > model.cfg.max_position_embeddings:
        raise ValueError(
            f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds max_position_embeddings "
            f"({model.cfg.max_position_embeddings})"
        )
    return tokens_BP, mask_BP


@torch.no_grad()
def _decode_steps(
    model: HookedGemma,
    tokens_BP: Tensor,
    mask_BP: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int | None,
    stop_at_eos: bool,
    seed: int | None,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> Iterator[tuple[Tensor, Tensor]]:
    """The decode loop: yields ``(next_B, finished_B)`` once per new token, finished rows given the pad id.

    The forward pass for step ``t + 1`` runs only when the consumer asks for it, so closing the
    generator after a step costs no further forward pass. Stops once every row has finished (with
    ``stop_at_eos``) or after ``max_new_tokens`` steps. ``fwd_hooks`` are attached around each
    forward pass (the prompt's and every step's) and detached after it, so nothing stays attached
    between the steps of a stream.
    """
    cfg = model.cfg
    B, P = tokens_BP.shape
    cache = KVCache(
        cfg.n_layers, B, cfg.n_kv_heads, P + max_new_tokens, cfg.d_head, model.device, model.dtype
    )

    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(seed)

    def next_ids(tokens_BQ: Tensor, mask_BQ: Tensor) -> Tensor:
        """The next ids [B] after one forward pass on the cache, with ``fwd_hooks`` attached."""
        with model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext():
            if temperature == 0:  # greedy needs the argmax only, not every logit
                resid_BQM = model(tokens_BQ, mask_BQ, kv_cache=cache, stop_at_layer=cfg.n_layers)
                return model.greedy_tokens(resid_BQM)
            logits_BV = model(tokens_BQ, mask_BQ, kv_cache=cache, last_only=True)[:, -1]
        return sample_next(logits_BV, temperature, top_p, top_k, generator)

    eos = torch.tensor(cfg.eos_token_ids, device=model.device)
    finished_B = torch.zeros(B, dtype=torch.bool, device=model.device)
    next_B = next_ids(tokens_BP, mask_BP)
    for step in range(max_new_tokens):
        next_B = torch.where(finished_B, torch.full_like(next_B, cfg.pad_token_id), next_B)
        if stop_at_eos:
            is_eos_B = torch.isin(next_B, eos)
            finished_B = finished_B | is_eos_B
        yield next_B, finished_B
        if (stop_at_eos and bool(finished_B.all())) or step + 1 == max_new_tokens:
            return
        step_mask_B1 = (
            (~finished_B | is_eos_B).long()[:, None] if stop_at_eos else torch.ones_like(next_B)[:, None]
        )
        next_B = next_ids(next_B[:, None], step_mask_B1)


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
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> GenerationOutput:
    """Continue ``prompt`` (text, texts, or ids [B, Q] left-padded with ``attention_mask``).

    ``temperature=0`` (default) is greedy decoding; otherwise sampling with optional top-k / top-p.
    Rows that emit an EOS stop; the rest continue until ``max_new_tokens``. ``fwd_hooks``
    (TransformerLens ``(name, fn)`` pairs) run on every forward pass, the prompt's and each step's.
    """
    tokens_BP, mask_BP = _prepare(
        model, prompt, max_new_tokens, temperature, top_p, attention_mask, fwd_hooks
    )
    B = tokens_BP.shape[0]
    cfg = model.cfg
    columns: list[Tensor] = []
    finished_B = torch.zeros(B, dtype=torch.bool, device=model.device)
    steps = _decode_steps(
        model, tokens_BP, mask_BP, max_new_tokens, temperature, top_p, top_k, stop_at_eos, seed, fwd_hooks
    )
    for next_B, step_finished_B in steps:
        columns.append(next_B)
        finished_B = step_finished_B
    new_BN = torch.stack(columns, dim=1)
    rows: list[list[int]] = []
    for row in new_BN.tolist():
        out = []
        for t in row:
            out.append(t)
            if stop_at_eos and t in cfg.eos_token_ids:
                break
        rows.append(out)
    texts = (
        [model.tokenizer.decode(r, skip_special_tokens=True) for r in rows] if model.tokenizer else [""] * B
    )
    return GenerationOutput(torch.cat([tokens_BP, new_BN], dim=1), rows, texts, [bool(f) for f in finished_B])


def generate_stream(
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
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> Iterator[int]:
    """Continue one prompt token by token: yields each new id as soon as it is sampled.

    Same arguments and the same ids as :func:`generate` (``list(generate_stream(...))`` equals
    ``generate(...).new_tokens[0]``, EOS included), but for a batch of one: a text, a list of one
    text, or ids [P] / [1, P]. The arguments are checked at the call, before anything runs; the
    decoding runs as the iterator is consumed, and closing it (``close()``, ``break`` in a ``for``
    loop that drops it, garbage collection) stops decoding with no further forward pass.
    """
    tokens_BP, mask_BP = _prepare(
        model, prompt, max_new_tokens, temperature, top_p, attention_mask, fwd_hooks
    )
    if tokens_BP.shape[0] != 1:
        raise ValueError(
            f"generate_stream decodes one prompt; got a batch of {tokens_BP.shape[0]} "
            "(pass one text or ids [P] / [1, P], or use generate for a batch)"
        )
    steps = _decode_steps(
        model, tokens_BP, mask_BP, max_new_tokens, temperature, top_p, top_k, stop_at_eos, seed, fwd_hooks
    )
    return _single_row_ids(steps)


def _single_row_ids(steps: Iterator[tuple[Tensor, Tensor]]) -> Iterator[int]:
    """The ids of row 0 as ints; closing this closes the decode loop."""
    try:
        for next_B, _ in steps:
            yield int(next_B[0])
    finally:
        steps.close()
