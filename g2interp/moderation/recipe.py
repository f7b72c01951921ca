"""How the shipped heads are trained from the shared sets: splits, styles and weights.

* **Split** by group: rows of one conversation (responses to one prompt) or one text land in the same part,
  so no prompt is seen in training and scored in validation; seeded, 60/20/20 by a stable hash.
* **Styles**: ``prompt`` (user requests), ``response`` (model replies) and ``text`` (posts, comments,
  web snippets). Several sets hold one class only (all harmful requests, all sexist posts, all safe
  look-alikes); a head could learn *which set a text looks like*. Weighting balances the two classes
  within each style, so every style shows the head both classes from several sources.
* **Weights**: a set's total weight grows as ``n ** set_power`` (big sets count more, not in proportion),
  each class within a style carries half its style's weight, no row is thrown away.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from g2interp.moderation.datasets import LabelledText

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Seeded grouped split and weighting of labelled rows."""

    seed: int = 20261201
    """Seed of the split hash."""
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """Train / validation / test shares of each set's groups."""
    set_power: float = 0.5
    """A set's total weight is ``rows ** set_power`` (0: every set equal; 1: every row equal)."""

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-9:
            raise ValueError(f"fractions must be three shares >= 0 summing to 1, got {self.fractions}")
        if not 0.0 <= self.set_power <= 1.0:
            raise ValueError(f"set_power must lie in [0, 1], got {self.set_power}")


def style(row: LabelledText) -> str:
    """``prompt``, ``response`` or ``text``."""
    return "response" if row.is_response else ("prompt" if row.kind == "prompt" else "text")


def group_key(row: LabelledText) -> str:
    """Rows with one key share a split: a response's prompt (when given), else the text itself."""
    key = row.prompt if row.is_response and row.prompt.strip() else row.text
    return " ".join(key.lower().split())


def split_of(row: LabelledText, cfg: SplitConfig = SplitConfig()) -> str:
    """``train``, ``val`` or ``test`` for one row, from a stable hash of its set and group."""
    u = zlib.crc32(f"{cfg.seed}:{row.source}:{group_key(row)}".encode()) / 2**32
    a, b, _ = cfg.fractions
    return "train" if u < a else ("val" if u < a + b else "test")


def balance_weights(rows: Sequence[LabelledText], y: Sequence[int], set_power: float = 0.5) -> np.ndarray:
    """Per-row weights (mean 1): sets weighted by ``n ** set_power``, classes balanced within each style."""
    y = np.asarray(y)
    if len(rows) != len(y):
        raise ValueError(f"{len(rows)} rows but {len(y)} labels")
    sources = np.array([r.source for r in rows])
    styles = np.array([style(r) for r in rows])
    w = np.zeros(len(rows))
    for s in np.unique(sources):
        m = sources == s
        w[m] = m.sum() ** set_power / m.sum()
    style_mass = {st: w[styles == st].sum() for st in np.unique(styles)}
    for st, mass in style_mass.items():
        for cls in (0, 1):
            m = (styles == st) & (y == cls)
            if m.any() and ((styles == st) & (y == 1 - cls)).any():
                w[m] *= mass / 2 / w[m].sum()
    return w / w.mean()
