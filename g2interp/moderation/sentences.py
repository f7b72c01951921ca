"""Sentence views of a text: what the Moderator scores besides the whole text.

A harmful sentence followed (or preceded) by other text, such as an instruction addressed to the
classifier, is diluted in the whole text's pooled features; scored on its own it is not. The Moderator
scores the whole text and each of its sentences and keeps each policy's maximum, so appended text cannot
lower a verdict below what its most harmful sentence gets alone.
"""

from __future__ import annotations

import itertools
import re

BREAK = re.compile(r"(?<=[.!?])\s+|\n+|\s*<[^<>\n]{1,40}>\s*")
"""Sentence ends (., ! or ? then white space), line breaks and markup tags (``<...>``, e.g. chat-template
tokens), which delimit content too."""
LETTERS = re.compile(r"[^\W\d_]")


def sentences(text: str, max_parts: int) -> list[str]:
    """The text's sentences (at most ``max_parts``: longer texts are cut into that many runs of consecutive
    sentences), or ``[]`` when it has fewer than two. Parts without letters are dropped."""
    if max_parts < 2:
        raise ValueError(f"max_parts must be >= 2, got {max_parts}")
    parts = [p.strip() for p in BREAK.split(text)]
    parts = [p for p in parts if LETTERS.search(p)]
    if len(parts) < 2:
        return []
    if len(parts) > max_parts:  # consecutive runs of about equal length in sentences
        bounds = [round(k * len(parts) / max_parts) for k in range(max_parts + 1)]
        parts = [" ".join(parts[a:b]) for a, b in itertools.pairwise(bounds)]
    return parts
