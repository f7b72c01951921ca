"""Reading activations: shuffled batches from a store, or straight from the model, one interface.

Shuffling with a bounded buffer, deterministic for a seed and resumable from a position:
each epoch, units (a store's shards, or groups of contexts run on the fly) are put in a seeded
order and grouped into windows of at most ``buffer_rows`` rows; the rows of each window are
permuted (seeded by seed, epoch and window) and cut into batches, a batch may span two windows.
The order of an epoch is thus a function of (seed, epoch, unit sizes) alone, so starting at batch
``n`` skips whole windows without reading them, and every row is visited exactly once per epoch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors.torch import load
from torch import Tensor

from g2interp.activations.capture import iter_captured_rows, read_contexts
from g2interp.activations.corpus import PackedContexts
from g2interp.activations.manifest import (
    MANIFEST_FILE,
    RANK_JOURNAL_GLOB,
    Manifest,
    ShardCorruptError,
    ShardMissingError,
    ShardRecord,
    StoreError,
    read_journal,
    sha256_bytes,
)
from g2interp.model.gemma import HookedGemma

logger = logging.getLogger(__name__)

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

    def slice(self, start: int, end: int) -> Rows:
        return Rows(
            {h: a[start:end] for h, a in self.activations.items()},
            self.tokens[start:end],
            self.contexts[start:end],
            self.positions[start:end],
        )

    def take(self, index: Tensor) -> Rows:
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


def window_permutation(n_rows: int, seed: int, epoch: int, window: int) -> Tensor:
    return torch.from_numpy(np.random.default_rng([seed, epoch, window]).permutation(n_rows))


class _Lazy:
    """A load run when its result is asked for (no prefetch)."""

    def __init__(self, fn, units: list[int]):
        self.fn, self.units = fn, units

    def result(self) -> Rows:
        return self.fn(self.units)


class ActivationBatches(Iterator):
    """Shuffled batches of activations; ``position`` counts the batches consumed (pass it as ``start``).

    Yields ``Tensor[batch, d]`` for one hook (``hooks`` a str), a dict of them for several aligned
    hooks (a list), or :class:`IndexedBatch` with ``with_index=True``.

    Args:
        unit_rows: rows in each unit (shard, or group of contexts); units are loaded whole.
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

    def state_dict(self) -> dict[str, Any]:
        return {"position": self._position, "seed": self.seed, "batch_size": self.batch_size}

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

    def load_units(self, units: Sequence[int]) -> Rows:
        """Rows of these units, concatenated in the order given."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------- machinery
    def _load_async(self, units: Sequence[int]) -> Future | _Lazy:
        if not self.prefetch:
            return _Lazy(self.load_units, list(units))
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
            rows = pending.result()
            pending = self._load_async(windows[w + 1]) if w + 1 < len(windows) else None
            if rows.n_rows != sizes[w]:
                raise StoreError(f"window {w} of epoch {epoch} has {rows.n_rows} rows, expected {sizes[w]}")
            perm = window_permutation(sizes[w], self.seed, epoch, w)
            rows = rows.take(perm[offset:] if w == first else perm)
            if leftover is not None:
                rows = Rows.cat([leftover, rows])
            n, i = rows.n_rows, 0
            while n - i >= self.batch_size:
                self._position += 1
                yield self._emit(rows.slice(i, i + self.batch_size))
                i += self.batch_size
            leftover = rows.slice(i, n) if i < n else None
        if leftover is not None and not self.drop_last:
            self._position += 1
            yield self._emit(leftover)


# ---------------------------------------------------------------------------------------------- store
class ActivationStore:
    """A store folder: its manifest, its shards (checksummed on first read) and shuffled batches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / MANIFEST_FILE).is_file():
            raise StoreError(f"{self.path} holds no activation store ({MANIFEST_FILE} not found)")
        manifest = Manifest.read(self.path / MANIFEST_FILE)
        journals = sorted(self.path.glob(RANK_JOURNAL_GLOB))
        if journals:  # a distributed capture still running or killed: its ranks' finished shards count
            manifest = manifest.with_shards([r for j in journals for r in read_journal(j)])
        self.manifest = manifest
        if not manifest.complete:
            logger.warning(
                "store %s is incomplete: %d of %d shards; reading those (resume the capture to finish it)",
                self.path,
                len(manifest.shards),
                manifest.n_shards,
            )
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest.hooks)

    @property
    def shards(self) -> tuple[ShardRecord, ...]:
        return self.manifest.shards

    @property
    def rows(self) -> int:
        return self.manifest.rows

    def d(self, hook: str) -> int:
        """Width of the stored rows of ``hook``."""
        return self._hook(hook).d

    def mean_squared_norm(self, hook: str) -> float:
        """Mean squared L2 norm of the stored activations of ``hook`` (for normalisation)."""
        value = self._hook(hook).mean_squared_norm
        if value is None:
            raise StoreError(f"store {self.path} holds no rows of {hook} yet")
        return value

    def contexts(self) -> PackedContexts:
        """The packed contexts whose positions the rows index."""
        return read_contexts(self.path, self.manifest)

    def read_shard(self, hook: str, index: int) -> Rows:
        """One shard of one hook, its checksum verified the first time it is read."""
        self._hook(hook)
        record = next((s for s in self.manifest.shards if s.index == index), None)
        if record is None:
            raise StoreError(f"store {self.path} lists no shard {index}")
        file = record.files[hook]
        path = self.path / file.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ShardMissingError(
                f"shard {index} of {hook}: {path} is missing (the manifest lists it)"
            ) from None
        with self._lock:
            verified = file.path in self._verified
        if not verified:
            digest = sha256_bytes(data)
            if digest != file.sha256:
                raise ShardCorruptError(
                    f"shard {index} of {hook}: {path} is corrupted (sha256 {digest[:16]}..., "
                    f"the manifest says {file.sha256[:16]}...)"
                )
            with self._lock:
                self._verified.add(file.path)
        try:
            tensors = load(data)
        except Exception as exc:
            raise ShardCorruptError(
                f"shard {index} of {hook}: {path} is not readable safetensors: {exc}"
            ) from exc
        return Rows(
            {hook: tensors["activations"]}, tensors["tokens"], tensors["contexts"], tensors["positions"]
        )

    def read_rows(self, hooks: Sequence[str], indices: Sequence[int]) -> Rows:
        """Shards ``indices`` of several hooks, concatenated, rows aligned across the hooks."""
        parts = []
        for index in indices:
            per_hook = [self.read_shard(h, index) for h in hooks]
            ref = per_hook[0]
            for h, other in zip(hooks[1:], per_hook[1:], strict=True):
                if not (
                    torch.equal(other.contexts, ref.contexts) and torch.equal(other.positions, ref.positions)
                ):
                    raise StoreError(f"shard {index}: rows of {h} and {hooks[0]} are not aligned")
            acts = {h: r.activations[h] for h, r in zip(hooks, per_hook, strict=True)}
            parts.append(Rows(acts, ref.tokens, ref.contexts, ref.positions))
        return Rows.cat(parts)

    def verify(self) -> list[str]:
        """Check every shard file against its checksum; one message per missing or corrupted file."""
        problems = []
        for record in self.manifest.shards:
            for hook, file in record.files.items():
                path = self.path / file.path
                if not path.is_file():
                    problems.append(f"shard {record.index} of {hook}: {path} is missing")
                elif sha256_bytes(path.read_bytes()) != file.sha256:
                    problems.append(f"shard {record.index} of {hook}: {path} is corrupted")
        return problems

    def batches(self, hooks: str | Sequence[str], batch_size: int, **kwargs: Any) -> StoreBatches:
        """Shuffled batches of one hook (``Tensor[batch, d]``) or several aligned (a dict); see ActivationBatches."""
        return StoreBatches(self, hooks, batch_size=batch_size, **kwargs)

    def _hook(self, hook: str):
        if hook not in self.manifest.hooks:
            raise KeyError(f"store {self.path} has no hook {hook!r}; it holds {self.hooks}")
        return self.manifest.hooks[hook]


class StoreBatches(ActivationBatches):
    """Shuffled batches read from an :class:`ActivationStore` (units are shards)."""

    def __init__(self, store: ActivationStore, hooks: str | Sequence[str], **kwargs: Any):
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        for h in names:
            store._hook(h)
        self.store = store
        self._indices = [s.index for s in store.shards]
        super().__init__([s.rows for s in store.shards], hooks, **kwargs)

    def load_units(self, units: Sequence[int]) -> Rows:
        return self.store.read_rows(self.hooks, [self._indices[u] for u in units])


# ---------------------------------------------------------------------------------------------- on the fly
class OnTheFlyBatches(ActivationBatches):
    """The same batches interface, straight from the model: units are groups of ``model_batch_size`` contexts."""

    def __init__(
        self,
        model: HookedGemma,
        contexts: PackedContexts,
        hooks: str | Sequence[str],
        *,
        batch_size: int,
        model_batch_size: int = 8,
        exclude: Sequence[str] = ("bos", "pad"),
        prefetch: bool = False,
        **kwargs: Any,
    ):
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        model.resolve_hook_names(names)
        if model_batch_size < 1:
            raise ValueError(f"model_batch_size must be positive, got {model_batch_size}")
        self.model = model
        self.contexts = contexts
        self.model_batch_size = model_batch_size
        self.exclude = tuple(exclude)
        n = len(contexts)
        spans = [(s, min(s + model_batch_size, n)) for s in range(0, n, model_batch_size)]
        self._spans = spans
        unit_rows = [int(contexts.keep_mask(s, e, self.exclude).sum()) for s, e in spans]
        super().__init__(unit_rows, hooks, batch_size=batch_size, prefetch=prefetch, **kwargs)

    def load_units(self, units: Sequence[int]) -> Rows:
        parts = []
        for u in units:
            s, e = self._spans[u]
            for rows in iter_captured_rows(
                self.model,
                self.contexts,
                self.hooks,
                start=s,
                end=e,
                batch_size=self.model_batch_size,
                exclude=self.exclude,
            ):
                parts.append(Rows(rows.activations, rows.tokens, rows.contexts, rows.positions))
        return Rows.cat(parts)
