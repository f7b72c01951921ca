"""The activation store read back: manifest, contexts and checksummed shards, as an activation source."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from g2interp.activations.batches import Rows
from g2interp.activations.capture import read_contexts
from g2interp.activations.config import ContextsConfig
from g2interp.activations.corpus import PackedContexts
from g2interp.activations.manifest import (
    MANIFEST_FILE,
    Manifest,
    ShardCorruptError,
    ShardMissingError,
    ShardRecord,
    StoreError,
    journal_records,
    sha256_bytes,
)
from g2interp.activations.source import ActivationSource
from g2interp.cli_config import config_from_args

logger = logging.getLogger(__name__)


class ActivationStore(ActivationSource):
    """A store folder: its manifest, its contexts and shards (checksummed on first read), as a source."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / MANIFEST_FILE).is_file():
            raise StoreError(f"{self.path} holds no activation store ({MANIFEST_FILE} not found)")
        # a distributed capture still running or killed: its ranks' finished shards count
        self.manifest = manifest = Manifest.read(self.path / MANIFEST_FILE).with_shards(
            journal_records(self.path)[0]
        )
        if not manifest.complete:
            logger.warning(
                "store %s is incomplete: %d of %d shards; reading those (resume the capture to finish it)",
                self.path,
                len(manifest.shards),
                manifest.n_shards,
            )
        self._verified: set[str] = set()
        self._lock = threading.Lock()
        self._contexts: PackedContexts | None = None
        self.name, self.hooks = f"store {self.path}", list(manifest.hooks)
        self.fingerprint = manifest.fingerprint
        self.model_source = str(manifest.model.get("source", ""))
        self.model_fingerprint = str(manifest.model["fingerprint"])
        packing = {**manifest.identity, "data": str(manifest.corpus["source"])}
        self.contexts_config = config_from_args(ContextsConfig, packing)

    def hook_shape(self, hook: str) -> tuple[int, ...]:
        return tuple(self._hook(hook).shape)

    def unit_rows(self, split: str) -> dict[int, int]:
        r = self.contexts().split_range(split)
        return {s.index: s.rows for s in self.manifest.shards if r.start <= s.context_start < r.stop}

    def load_units(self, hooks: Sequence[str], units: Sequence[int]) -> Rows:
        return self.read_rows(hooks, units)

    def provenance(self, hook: str) -> dict[str, Any]:
        return {**super().provenance(hook), "store": str(self.path.resolve())}

    @property
    def shards(self) -> tuple[ShardRecord, ...]:
        return self.manifest.shards

    @property
    def rows(self) -> int:
        return self.manifest.rows

    def mean_squared_norm(self, hook: str) -> float:
        """Mean squared L2 norm of the stored activations of ``hook`` (for normalisation)."""
        value = self._hook(hook).mean_squared_norm
        if value is None:
            raise StoreError(f"store {self.path} holds no rows of {hook} yet")
        return value

    def contexts(self) -> PackedContexts:
        """The packed contexts whose positions the rows index (read and checked once)."""
        if self._contexts is None:
            self._contexts = read_contexts(self.path, self.manifest)
        return self._contexts

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

    def _hook(self, hook: str):
        if hook not in self.manifest.hooks:
            raise KeyError(f"store {self.path} has no hook {hook!r}; it holds {self.hooks}")
        return self.manifest.hooks[hook]
