"""Reading dashboards back: ``Dashboards.load(folder).latent(i)``.

Loading reads the manifest, the token texts and the small per-latent vectors (densities, maxima, the
centre token of each top context, the promoted tokens); a latent's windows and histogram are read from
the safetensors file when asked for (memory-mapped slices), so loading costs the same for any width.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from torch import Tensor

from g2interp.dashboards.constants import (
    DASHBOARD_FORMAT,
    DASHBOARD_MANIFEST_FILE,
    DASHBOARD_TENSORS_FILE,
    DASHBOARD_VOCAB_FILE,
    DASHBOARDS_DIR,
)

#: Tensors read whole at load time (one value or a short row per latent).
_EAGER = (
    "density",
    "n_fired",
    "mean_activation",
    "max_activation",
    "top_center_tokens",
    "promoted_ids",
    "promoted_values",
)


class DashboardsNotFoundError(FileNotFoundError):
    """A folder holds no (complete) dashboards."""


class LatentContext(NamedTuple):
    """One top-activating context of a latent: a window of tokens and the latent's activation on each."""

    tokens: list[str]
    """Text of each token of the window."""
    token_ids: list[int]
    """Their ids."""
    activations: list[float]
    """The latent's activation on each token (0 on excluded positions such as BOS)."""
    center: int
    """Index in the window of the token with the context's largest activation."""
    max_activation: float
    """That activation."""
    context: int
    """Index of the context in the corpus contexts the dashboards were built from."""
    position: int
    """Position of the centre token in that context."""


class TokenEffect(NamedTuple):
    """A token a latent's decoder direction promotes or suppresses."""

    token: str
    """Its text."""
    token_id: int
    """Its id."""
    effect: float
    """Logit change per unit of activation (through the final norm's scale)."""


class LatentDashboard(NamedTuple):
    """Everything recorded about one latent."""

    index: int
    """The latent."""
    density: float
    """Fraction of tokens it fired on."""
    n_fired: int
    """Tokens it fired on."""
    mean_activation: float
    """Mean activation over the tokens it fired on (0 when dead)."""
    max_activation: float
    """Largest activation seen."""
    contexts: list[LatentContext]
    """Top-activating contexts, strongest first (empty when dead)."""
    hist_edges: list[float]
    """Activation histogram bin edges (activation values, log-spaced), trimmed to the non-empty bins."""
    hist_counts: list[int]
    """Tokens per bin."""
    promoted: list[TokenEffect]
    """Tokens it promotes most, strongest first."""
    suppressed: list[TokenEffect]
    """Tokens it suppresses most, strongest first."""

    @property
    def dead(self) -> bool:
        return self.n_fired == 0


@dataclass
class Dashboards:
    """The dashboards of one SAE (see :mod:`g2interp.dashboards.build`)."""

    folder: Path
    """The dashboards folder."""
    manifest: dict[str, Any]
    """What they were built from (hook, SAE fingerprint, corpus, tokens, config)."""
    vocab: dict[int, str]
    """Token id -> text, for every id the dashboards mention."""
    stats: dict[str, Tensor]
    """Small per-latent tensors read at load (``density``, ``n_fired``, ``max_activation``, ...)."""

    @classmethod
    def load(cls, folder: str | Path) -> Dashboards:
        """Read the dashboards in ``folder`` (a dashboards folder, or an SAE folder holding ``dashboards/``)."""
        path = Path(folder)
        if not (path / DASHBOARD_MANIFEST_FILE).is_file():  # an SAE folder
            path = path / DASHBOARDS_DIR
        manifest_path = path / DASHBOARD_MANIFEST_FILE
        if not manifest_path.is_file() or not (path / DASHBOARD_TENSORS_FILE).is_file():
            raise DashboardsNotFoundError(
                f"no dashboards in {Path(folder)} (no {DASHBOARDS_DIR}/{DASHBOARD_MANIFEST_FILE}); build them "
                f"with `g2interp dashboards --sae {Path(folder)}`"
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != DASHBOARD_FORMAT:
            raise ValueError(
                f"{manifest_path}: dashboard format {manifest.get('format')!r}; this version reads "
                f"{DASHBOARD_FORMAT} (rebuild them)"
            )
        vocab_path = path / DASHBOARD_VOCAB_FILE
        raw_vocab = json.loads(vocab_path.read_text()) if vocab_path.is_file() else {}
        vocab = {int(k): v for k, v in raw_vocab.items()}
        with safe_open(str(path / DASHBOARD_TENSORS_FILE), framework="pt") as f:
            stats = {name: f.get_tensor(name) for name in _EAGER}
        return cls(path, manifest, vocab, stats)

    # ------------------------------------------------------------------ summary
    @property
    def d_sae(self) -> int:
        return int(self.manifest["d_sae"])

    @property
    def hook_name(self) -> str:
        return str(self.manifest["hook_name"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def density(self) -> Tensor:
        """Fraction of tokens each latent fired on [d_sae]."""
        return self.stats["density"]

    @property
    def dead(self) -> Tensor:
        """Indices of latents that never fired."""
        return (self.stats["n_fired"] == 0).nonzero()[:, 0]

    def order(self, by: str = "density", descending: bool = True) -> Tensor:
        """Latent indices sorted by ``density``, ``max_activation`` or ``mean_activation`` (stable)."""
        if by not in ("density", "max_activation", "mean_activation"):
            raise ValueError(f"cannot sort by {by!r}; use density, max_activation or mean_activation")
        return torch.sort(self.stats[by], descending=descending, stable=True).indices

    def token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self.vocab.get(int(token_id), f"<{token_id}>")

    def top_token(self, index: int) -> str:
        """Text of the token the latent fires on most (its strongest context's centre), '' when dead."""
        return self.token_text(int(self.stats["top_center_tokens"][self._check(index), 0]))

    def top_promoted(self, index: int) -> str:
        """Text of the token the latent's direction promotes most."""
        ids = self.stats["promoted_ids"][self._check(index)]
        return self.token_text(int(ids[0])) if ids.numel() else ""

    def search(self, query: str, limit: int = 50) -> list[int]:
        """Latents whose top-context tokens or promoted tokens contain ``query`` (case-insensitive),
        the densest first; a number finds that latent."""
        query = query.strip()
        if not query:
            return []
        if query.lstrip("#").isdigit() and int(query.lstrip("#")) < self.d_sae:
            return [int(query.lstrip("#"))]
        needle = query.lower()
        matching = [i for i, text in self.vocab.items() if needle in text.lower()]
        if not matching:
            return []
        ids = torch.tensor(matching)
        hit_F = torch.isin(self.stats["top_center_tokens"], ids).any(1)
        hit_F |= torch.isin(self.stats["promoted_ids"], ids).any(1)
        order = self.order("density")
        return [int(i) for i in order[hit_F[order]][:limit]]

    # ------------------------------------------------------------------ one latent
    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.d_sae:
            raise IndexError(
                f"latent {index} out of range: this SAE has {self.d_sae} latents (0..{self.d_sae - 1})"
            )
        return index

    def latent(self, index: int) -> LatentDashboard:
        """The dashboard of latent ``index``."""
        i = self._check(index)
        with safe_open(str(self.folder / DASHBOARD_TENSORS_FILE), framework="pt") as f:
            row = {
                name: f.get_slice(name)[i : i + 1][0]
                for name in (
                    "top_values",
                    "top_context",
                    "top_position",
                    "top_tokens",
                    "top_acts",
                    "hist_counts",
                    "suppressed_ids",
                    "suppressed_values",
                )
            }
        contexts = []
        for j in range(row["top_values"].shape[0]):
            value = float(row["top_values"][j])
            if value <= 0 or int(row["top_context"][j]) < 0:
                continue
            ids = row["top_tokens"][j]
            inside = (ids >= 0).nonzero()[:, 0]
            lo, hi = int(inside.min()), int(inside.max()) + 1
            window = self.manifest["config"]["window"]
            contexts.append(
                LatentContext(
                    tokens=[self.token_text(int(t)) for t in ids[lo:hi]],
                    token_ids=[int(t) for t in ids[lo:hi]],
                    activations=[float(a) for a in row["top_acts"][j, lo:hi]],
                    center=window - lo,
                    max_activation=value,
                    context=int(row["top_context"][j]),
                    position=int(row["top_position"][j]),
                )
            )
        edges_log10 = self.manifest["hist_edges_log10"]
        counts = row["hist_counts"].tolist()
        nonzero = [k for k, c in enumerate(counts) if c]
        lo, hi = (nonzero[0], nonzero[-1] + 1) if nonzero else (0, 0)
        return LatentDashboard(
            index=i,
            density=float(self.stats["density"][i]),
            n_fired=int(self.stats["n_fired"][i]),
            mean_activation=float(self.stats["mean_activation"][i]),
            max_activation=float(self.stats["max_activation"][i]),
            contexts=contexts,
            hist_edges=[math.pow(10.0, e) for e in edges_log10[lo : hi + 1]] if nonzero else [],
            hist_counts=counts[lo:hi],
            promoted=self._effects(self.stats["promoted_ids"][i], self.stats["promoted_values"][i]),
            suppressed=self._effects(row["suppressed_ids"], row["suppressed_values"]),
        )

    def _effects(self, ids: Tensor, values: Tensor) -> list[TokenEffect]:
        return [
            TokenEffect(self.token_text(int(t)), int(t), float(v))
            for t, v in zip(ids.tolist(), values.tolist(), strict=True)
        ]
