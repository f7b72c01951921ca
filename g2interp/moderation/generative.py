"""Generative (ShieldGemma) scoring: P(Yes) from the 'Yes'/'No' logits after each policy's question.

Every policy of a text shares its prefix: the text part runs once into a KV cache (``PrefixRunner``), then
each policy's suffix runs from that cache (rewound between policies; nothing is copied). Suffix ids do not
depend on the text, so a batch's suffix rows need no padding. ``score_naive`` is the reference way: one
full forward per (text, policy). ``Moderator`` drives the batching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from g2interp.model.gemma import HookedGemma
from g2interp.moderation.policies import Policy
from g2interp.moderation.runner import PrefixRun, PrefixRunner, yes_probability
from g2interp.moderation.template import EncodedText, TemplateEncoder


def gap_free(model: HookedGemma, batch: Sequence[EncodedText], suffix_len: int) -> bool:
    """Whether suffixes may follow right-padded prefixes exactly.

    Padding between a short row's text part and its suffix is masked out, but sliding-window layers
    measure the window in cache slots: exact when no row is padded or the whole cache fits the window.
    """
    widths = {len(e.ids) for e in batch}
    window = model.cfg.sliding_window
    return len(widths) == 1 or window is None or max(widths) + suffix_len <= window


def score_suffixes(
    runner: PrefixRunner,
    run: PrefixRun,
    suffixes: Sequence[Sequence[int]],
    yes_id: int,
    no_id: int,
) -> Tensor:
    """P(Yes) [B, n_suffixes] for suffixes continuing a run made with ``extra_len >= max(len(suffix))``."""
    model, cache = runner.model, run.cache
    start, positions_B = cache.length, cache.positions_B.clone()
    B = run.lengths_B.shape[0]
    out = torch.empty(B, len(suffixes), dtype=torch.float32)
    for j, suffix in enumerate(suffixes):
        cache.length = start  # rewind: this suffix overwrites the previous one's keys/values
        cache.positions_B = positions_B.clone()
        tokens_BS = torch.tensor([list(suffix)], dtype=torch.long, device=model.device).expand(B, -1)
        with torch.no_grad():
            resid_BSM = model(tokens_BS, kv_cache=cache, stop_at_layer=model.cfg.n_layers)
            out[:, j] = yes_probability(model, resid_BSM[:, -1], yes_id, no_id).cpu()
    cache.length, cache.positions_B = start, positions_B
    return out


def score_naive(
    model: HookedGemma,
    encoder: TemplateEncoder,
    encoded: Sequence[EncodedText],
    policies: Sequence[Policy],
    *,
    batch_size: int = 8,
    full_logits: bool = False,
) -> Tensor:
    """[N, P] P(Yes) the reference way: one full forward per (text, policy), as ShieldGemma's code does.

    ``full_logits=True`` reads the model's own [B, Q, vocab] logits (memory-hungry on a 262k vocab);
    otherwise only the 'Yes'/'No' unembedding rows are applied to the last position.
    """
    seqs = [(n, j, encoder.full(e, p)) for n, e in enumerate(encoded) for j, p in enumerate(policies)]
    seqs.sort(key=lambda s: len(s[2]))
    out = torch.empty(len(encoded), len(policies), dtype=torch.float32)
    for k in range(0, len(seqs), batch_size):
        chunk = seqs[k : k + batch_size]
        width = max(len(s) for _, _, s in chunk)
        tokens = torch.full((len(chunk), width), model.cfg.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for b, (_, _, s) in enumerate(chunk):
            tokens[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        last = mask.sum(1) - 1
        tokens, mask = tokens.to(model.device), mask.to(model.device)
        with torch.no_grad():
            if full_logits:
                logits = model(tokens, mask)[torch.arange(len(chunk)), last.to(model.device)]
                probs = logits[:, [encoder.yes_id, encoder.no_id]].float().softmax(-1)[:, 0]
            else:
                resid = model(tokens, mask, stop_at_layer=model.cfg.n_layers)
                probs = yes_probability(
                    model,
                    resid[torch.arange(len(chunk)), last.to(model.device)],
                    encoder.yes_id,
                    encoder.no_id,
                )
        for b, (n, j, _) in enumerate(chunk):
            out[n, j] = probs[b].cpu()
    return out
