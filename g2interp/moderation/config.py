"""Configuration of a Moderator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModeratorConfig:
    """How texts are cut, batched and judged."""

    max_text_tokens: int = 1024
    """Longest user text / response, in tokens, that is scored whole."""
    overflow: Literal["truncate", "error"] = "truncate"
    """Longer texts: ``"truncate"`` keeps their first and last ``max_text_tokens / 2`` tokens and logs a
    warning (the verdict says ``truncated``); ``"error"`` raises ValueError."""
    batch_size: int = 8
    """Texts per forward pass (texts are sorted by length first, so padding stays small)."""
    max_batch_tokens: int = 4096
    """Cap on padded text-part ids per batch (long texts get smaller batches)."""
    default_threshold: float = 0.5
    """Threshold for policies scored generatively (probe heads carry their own)."""
    max_sentences: int = 8
    """A text of several sentences is also scored one sentence at a time (runs of sentences beyond this
    many) and each policy keeps its maximum, so appended text (an instruction addressed to the classifier,
    padding) cannot dilute a harmful sentence; 0 scores the whole text only."""
    sentence_discount: float = 0.0
    """Subtracted from a sentence view's logit before the maximum: one sentence out of its context is
    weaker evidence than the whole text, and the discount holds down false positives on harmless
    multi-sentence text (experiments/README.md measures the trade-off)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_text_tokens, int) or self.max_text_tokens < 2:
            raise ValueError(f"max_text_tokens must be an int >= 2, got {self.max_text_tokens!r}")
        if self.overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error', got {self.overflow!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive int, got {self.max_batch_tokens!r}")
        if not isinstance(self.max_sentences, int) or self.max_sentences == 1 or self.max_sentences < 0:
            raise ValueError(f"max_sentences must be 0 (off) or an int >= 2, got {self.max_sentences!r}")
        if not isinstance(self.sentence_discount, (int, float)) or not 0.0 <= self.sentence_discount < 20.0:
            raise ValueError(
                f"sentence_discount must be a logit offset in [0, 20), got {self.sentence_discount!r}"
            )
        if not 0.0 < self.default_threshold < 1.0:
            raise ValueError(f"default_threshold must lie in (0, 1), got {self.default_threshold}")
