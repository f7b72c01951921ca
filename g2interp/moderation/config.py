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

    def __post_init__(self) -> None:
        if not isinstance(self.max_text_tokens, int) or self.max_text_tokens < 2:
            raise ValueError(f"max_text_tokens must be an int >= 2, got {self.max_text_tokens!r}")
        if self.overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error', got {self.overflow!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive int, got {self.max_batch_tokens!r}")
        if not 0.0 < self.default_threshold < 1.0:
            raise ValueError(f"default_threshold must lie in (0, 1), got {self.default_threshold}")
