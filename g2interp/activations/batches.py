"""Shuffled, resumable batches over units of rows: the one batching of stores and on-the-fly capture.

Shuffling with a bounded buffer, deterministic for a seed and resumable from a position:
each epoch, units (a store's shards, or the same spans of contexts run on the fly) are put in a seeded
order and grouped into windows of at most ``buffer_rows`` rows; the rows of each window are
permuted (seeded by seed, epoch and window) and cut into batches, a batch may span two windows.
The order of an epoch is thus a function of (seed, epoch, unit sizes) alone, so starting at batch
``n`` skips whole windows without reading them, and every row is visited exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import NamedTuple, Union

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from g2interp.activations.manifest import StoreError

Activations = Union[Float[Tensor, "batch d"], dict[str, Float[Tensor, "batch d"]]]  # noqa: UP007 (runtime alias)


class Rows(NamedTuple):
    """Rows of one or more units: activations per hook and where each row comes from."""

    activations: dict[str, Float[Tensor, "rows d"]]
    """Per hook, the rows (aligned across hooks)."""
    tokens: Int[Tensor, " rows"]
    """Token id at each row."""
    contexts: Int[Tensor, " rows"]
    """Context index of each row."""
    positions: Int[Tensor, " rows"]
    """Position of each row in its context."""

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])

    def take(self, index: Tensor | slice) -> Rows:
        """The rows at ``index`` (an index tensor or a slice), of every hook."""
        return Rows(
            {h: a[index] for h, a in self.activations.items()},
            self.tokens[index],
            self.contexts[index],
            self.positions[index],
        )

    @staticmethod
    def cat(parts: Sequence[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        return Rows(
            {h: torch.cat([p.activations[h] for p in parts]) for h in parts[0].activations},
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.contexts for p in parts]),
            torch.cat([p.positions for p in parts]),
        )


class IndexedBatch(NamedTuple):
    """A batch with the origin of each row (``with_index=True``)."""

    activations: Activations
    """[batch, d] (one hook) or a dict of them (several hooks)."""
    tokens: Int[Tensor, " batch"]
    """Token id at each row."""
    contexts: Int[Tensor, " batch"]
    """Context index of each row (into the store's ``contexts.safetensors``)."""
    positions: Int[Tensor, " batch"]
    """Position of each row in its context."""


def plan_epoch(unit_rows: Sequence[int], buffer_rows: int, seed: int, epoch: int) -> list[list[int]]:
    """Windows of units for one epoch: a seeded unit order cut into groups of at most ``buffer_rows`` rows."""
    order = np.random.default_rng([seed, epoch]).permutation(len(unit_rows))
    windows: list[list[int]] = []
    current: list[int] = []
    current_rows = 0
    for unit in order.tolist():
        if current and current_rows + unit_rows[unit] > buffer_rows:
            windows.append(current)
            current, current_rows = [], 0
        current.append(unit)
        current_rows += unit_rows[unit]
    if current:
        windows.append(current)
    return windows


class ActivationBatches(Iterator):
    """Shuffled batches of activations; ``position`` counts the batches consumed (pass it as ``start``).

    Yields ``Tensor[batch, d]`` for one hook (``hooks`` a str), a dict of them for several aligned
    hooks (a list), or :class:`IndexedBatch` with ``with_index=True``. Made by
    :meth:`ActivationSource.batches <g2interp.activations.source.ActivationSource.batches>`.

    Args:
        unit_rows: rows in each unit (a shard's span of contexts); units are loaded whole.
        load_units: rows of a list of units (indices into ``unit_rows``), concatenated in that order.
        batch_size: rows per batch; the last batch of an epoch is smaller unless ``drop_last``.
        seed: seeds the order of every epoch.
        buffer_rows: rows shuffled together (a unit larger than this is a window on its own); about
            two windows are in memory at once while the next one is prefetched.
        epochs: passes over the rows; None for endless.
        start: batches to skip (a previous iterator's ``position``); nothing before them is read.
        drop_last: leave out each epoch's last, partial batch.
        dtype, device: of the yielded activations (None keeps the stored dtype); index tensors stay on the CPU.
        with_index: yield :class:`IndexedBatch` (token, context, position of each row).
        prefetch: load the next window on a background thread while this one is consumed.
    """

    def __init__(
        self,
        unit_rows: Sequence[int],
        load_units: Callable[[Sequence[int]], Rows],
        hooks: str | Sequence[str],
        *,
        batch_size: int,
        seed: int = 0,
        buffer_rows: int = 1 << 17,
        epochs: int | None = 1,
        start: int = 0,
        drop_last: bool = False,
        dtype: torch.dtype | None = torch.float32,
        device: torch.device | str | None = None,
        with_index: bool = False,
        prefetch: bool = True,
    ):
        if batch_size < 1 or buffer_rows < 1:
            raise ValueError(f"batch_size and buffer_rows must be positive, got {batch_size}, {buffer_rows}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be None (endless) or >= 0, got {epochs}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.single = isinstance(hooks, str)
        self.hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        if not self.hooks:
            raise ValueError("name at least one hook")
        self.unit_rows = [int(r) for r in unit_rows]
        self.load_units = load_units
        self.n_rows = sum(self.unit_rows)
        self.batch_size = batch_size
        self.seed = seed
        self.buffer_rows = buffer_rows
        self.epochs = epochs
        self.drop_last = drop_last
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.with_index = with_index
        self.prefetch = prefetch
        self._position = start
        self._executor: ThreadPoolExecutor | None = None
        self._gen: Iterator | None = None

    # -------------------------------------------------------------------------------- interface
    @property
    def position(self) -> int:
        """Batches consumed since the first batch of epoch 0 (resume with ``start=position``)."""
        return self._position

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.n_rows // self.batch_size
        return -(-self.n_rows // self.batch_size)

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless iterator (epochs=None) has no length")
        return max(0, self.epochs * self.batches_per_epoch - self._position)

    def __iter__(self) -> ActivationBatches:
        return self

    def __next__(self) -> Activations | IndexedBatch:
        if self._gen is None:
            self._gen = self._generate()
        return next(self._gen)

    def close(self) -> None:
        """Stop a prefetch in progress and release its thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    # -------------------------------------------------------------------------------- machinery
    def _load_async(self, units: Sequence[int]) -> Future | Callable[[], Rows]:
        """A future of the units' rows (on the reader thread), or without prefetch a call that loads them."""
        if not self.prefetch:
            return partial(self.load_units, list(units))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="g2interp-reader")
        return self._executor.submit(self.load_units, list(units))

    def _emit(self, rows: Rows) -> Activations | IndexedBatch:
        acts = {h: rows.activations[h].to(device=self.device, dtype=self.dtype) for h in self.hooks}
        out = acts[self.hooks[0]] if self.single else acts
        if self.with_index:
            return IndexedBatch(out, rows.tokens, rows.contexts, rows.positions)
        return out

    def _generate(self) -> Iterator[Activations | IndexedBatch]:
        per_epoch = self.batches_per_epoch
        if per_epoch == 0:
            return
        try:
            while self.epochs is None or self._position < self.epochs * per_epoch:
                epoch, batch = divmod(self._position, per_epoch)
                yield from self._epoch(epoch, skip=batch * self.batch_size)
        finally:
            self.close()

    def _epoch(self, epoch: int, skip: int) -> Iterator[Activations | IndexedBatch]:
        windows = plan_epoch(self.unit_rows, self.buffer_rows, self.seed, epoch)
        sizes = [sum(self.unit_rows[u] for u in w) for w in windows]
        first, offset = 0, skip
        while first < len(windows) and offset >= sizes[first]:
            offset -= sizes[first]
            first += 1
        leftover: Rows | None = None  # fewer than batch_size rows carried into the next window
        pending = self._load_async(windows[first]) if first < len(windows) else None
        for w in range(first, len(windows)):
            rows = pending.result() if isinstance(pending, Future) else pending()
            pending = self._load_async(windows[w + 1]) if w + 1 < len(windows) else None
            if rows.n_rows != sizes[w]:
                raise StoreError(f"window {w} of epoch {epoch} has {rows.n_rows} rows, expected {sizes[w]}")
            perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, w]).permutation(sizes[w]))
            rows = rows.take(perm[offset:] if w == first else perm)
            if leftover is not None:
                rows = Rows.cat([leftover, rows])
            n, i = rows.n_rows, 0
            while n - i >= self.batch_size:
                self._position += 1
                yield self._emit(rows.take(slice(i, i + self.batch_size)))
                i += self.batch_size
            leftover = rows.take(slice(i, n)) if i < n else None
        if leftover is not None and not self.drop_last:
            self._position += 1
            yield self._emit(leftover)
