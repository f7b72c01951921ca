"""Token features of templated texts: what every probe head reads.

For each text, ``hook_resid_post`` of some layers over the tokens of the classified text (the prompt; for
responses, the reply) and at the text part's last token (the ``*`` that introduces the policy, which has
read the whole text), plus the raw text for lexical heads. Texts are stored back to back (ragged), with
offsets, so nothing is padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from g2interp.constants import HOOK_RESID_POST
from g2interp.moderation.runner import PrefixRun
from g2interp.moderation.template import EncodedText


@dataclass(frozen=True)
class TokenFeatures:
    """Ragged token activations of N texts."""

    acts_TLM: Float[Tensor, "tokens n_layer d_model"]
    """Activations of every classified token of every text, texts back to back."""
    offsets: Int[Tensor, " n_plus_1"]
    """Text i owns ``acts_TLM[offsets[i]:offsets[i + 1]]``."""
    last_NLM: Float[Tensor, "n n_layer d_model"]
    """Activation at each text part's last token."""
    layers: tuple[int, ...]
    """Blocks of the ``n_layer`` axis, in order."""
    texts: tuple[str, ...] | None = None
    """The classified texts (what lexical heads read); None when not kept."""

    def __post_init__(self) -> None:
        n = self.last_NLM.shape[0]
        if self.offsets.shape != (n + 1,) or int(self.offsets[-1]) != self.acts_TLM.shape[0]:
            raise ValueError(
                f"offsets {tuple(self.offsets.shape)} (ending at {int(self.offsets[-1])}) do not fit "
                f"{n} texts and {self.acts_TLM.shape[0]} tokens"
            )
        if self.acts_TLM.shape[1] != len(self.layers) or self.last_NLM.shape[1] != len(self.layers):
            raise ValueError(f"the layer axis must have {len(self.layers)} entries ({self.layers})")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"{len(self.texts)} texts for {n} feature rows")

    def __len__(self) -> int:
        return self.last_NLM.shape[0]

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def layer_index(self, layers: Sequence[int]) -> list[int]:
        missing = [x for x in layers if x not in self.layers]
        if missing:
            raise ValueError(f"features hold layers {self.layers}; a head needs {tuple(layers)}")
        return [self.layers.index(x) for x in layers]

    def pooled(self, layers: Sequence[int]) -> Float[Tensor, "n features"]:
        """Mean over the classified tokens and the last token, per layer: [N, 2 * n_layer * M] (fp32)."""
        li = self.layer_index(layers)
        acts_TLM = self.acts_TLM[:, li].float()
        seg_T = self.segment_ids()
        sums_NLM = torch.zeros(len(self), len(li), acts_TLM.shape[-1]).index_add_(0, seg_T, acts_TLM)
        mean_NLM = sums_NLM / self.lengths.clamp(min=1)[:, None, None]
        return torch.cat([mean_NLM, self.last_NLM[:, li].float()], 1).flatten(1)

    def segment_ids(self) -> Int[Tensor, " tokens"]:
        return torch.repeat_interleave(torch.arange(len(self)), self.lengths)

    def tokens(self, layers: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Every text's classified tokens and its last token, layers concatenated: ([T + N, n_layer * M]
        fp32, segment id per row)."""
        li = self.layer_index(layers)
        T, M = self.acts_TLM.shape[0], self.acts_TLM.shape[-1]
        x_TF = torch.empty(T + len(self), len(li) * M)
        for j, layer in enumerate(li):  # one converting copy per layer, no bf16 intermediates
            x_TF[:T, j * M : (j + 1) * M].copy_(self.acts_TLM[:, layer])
            x_TF[T:, j * M : (j + 1) * M].copy_(self.last_NLM[:, layer])
        seg_T = torch.cat([self.segment_ids(), torch.arange(len(self))])
        return x_TF, seg_T

    def slice(self, start: int, stop: int) -> TokenFeatures:
        """Texts ``start:stop`` (views, no copy)."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        texts = None if self.texts is None else self.texts[start:stop]
        return TokenFeatures(
            self.acts_TLM[lo:hi],
            self.offsets[start : stop + 1] - lo,
            self.last_NLM[start:stop],
            self.layers,
            texts,
        )

    def chunks(self, size: int = 2048):
        """Consecutive slices of at most ``size`` texts."""
        for start in range(0, len(self), size):
            yield self.slice(start, min(start + size, len(self)))

    def subset(self, idx: Sequence[int] | Tensor) -> TokenFeatures:
        idx = torch.as_tensor(idx, dtype=torch.long)
        lengths = self.lengths[idx]
        starts = self.offsets[idx]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        # token row = the text's start in the source + the position within the text
        rows = torch.repeat_interleave(starts - offsets[:-1], lengths) + torch.arange(int(offsets[-1]))
        texts = None if self.texts is None else tuple(self.texts[i] for i in idx.tolist())
        return TokenFeatures(self.acts_TLM[rows], offsets, self.last_NLM[idx], self.layers, texts)

    @staticmethod
    def cat(parts: Sequence[TokenFeatures]) -> TokenFeatures:
        if not parts:
            raise ValueError("nothing to concatenate")
        layers = parts[0].layers
        if any(p.layers != layers for p in parts):
            raise ValueError("features of different layers cannot be concatenated")
        lengths = torch.cat([p.lengths for p in parts])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        texts = None
        if all(p.texts is not None for p in parts):
            texts = tuple(t for p in parts for t in p.texts)
        return TokenFeatures(
            torch.cat([p.acts_TLM for p in parts]),
            offsets,
            torch.cat([p.last_NLM for p in parts]),
            layers,
            texts,
        )

    @staticmethod
    def from_run(
        run: PrefixRun,
        batch: Sequence[EncodedText],
        layers: Sequence[int],
        texts: Sequence[str] | None = None,
    ) -> TokenFeatures:
        """The features of one runner batch (its ``acts`` must hold ``hook_resid_post`` of ``layers``)."""
        layers = tuple(layers)
        stack_BTLM = torch.stack([run.acts[HOOK_RESID_POST.format(layer=x)] for x in layers], 2).float()
        spans, pieces = [], []
        for b, enc in enumerate(batch):
            start = enc.pool.start - enc.n_shared
            spans.append(enc.pool.end - enc.pool.start)
            pieces.append(stack_BTLM[b, start : start + spans[-1]])
        last_BLM = stack_BTLM[torch.arange(len(batch)), run.lengths_B.long() - 1]
        offsets = torch.tensor([0, *spans]).cumsum(0)
        return TokenFeatures(
            torch.cat(pieces).cpu(), offsets, last_BLM.cpu(), layers, None if texts is None else tuple(texts)
        )
