"""The store's on-disk layout, its JSON manifest, durable writes and the store's errors.

Layout of a store folder::

    manifest.json                   what the store holds; lists only shards already durable
    manifest.rank{r}.json           shards finished by rank r of a distributed run not yet merged
    contexts.safetensors            the packed contexts' token ids (tokens [N, L], lengths [N]); the
                                    last ``n_eval`` are the held-out split
    {hook}/{index:06d}.safetensors  one shard per hook: activations [rows, d], tokens, contexts, positions

A shard's files are written (temp file, fsync, rename) before the manifest that names them, so the
manifest never lists a shard that is not wholly on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from g2interp.files import atomic_write_bytes

STORE_FORMAT = "g2interp-activation-store"
STORE_VERSION = 2  # 2: contexts kept with a held-out split, shards never mixing the splits
MANIFEST_FILE = "manifest.json"
CONTEXTS_FILE = "contexts.safetensors"
RANK_JOURNAL_GLOB = "manifest.rank*.json"


def rank_journal_name(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def shard_file_name(index: int) -> str:
    return f"{index:06d}.safetensors"


class StoreError(RuntimeError):
    """An activation store cannot be created, resumed or read."""


class StoreMismatchError(StoreError):
    """The output folder holds a different store (or other files)."""


class StoreWriteError(StoreError):
    """Writing a shard failed; the shards listed in the manifest stay valid and resumable."""


class ShardMissingError(StoreError):
    """A shard the manifest lists is not on disk."""


class ShardCorruptError(StoreError):
    """A shard's bytes do not match the checksum in the manifest."""


# ---------------------------------------------------------------------------------------------- files
durable_write = atomic_write_bytes  # temp file + fsync + rename + folder fsync


def remove_temp_files(root: Path) -> int:
    """Delete temp files a killed writer left behind; returns how many."""
    n = 0
    for tmp in Path(root).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_tensors(tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> bytes:
    """safetensors bytes that depend on the contents only.

    safetensors writes its metadata map in hash order, which changes from run to run; one key holding
    sorted JSON keeps equal shards byte-identical (their checksums comparable across runs).
    """
    from safetensors.torch import save

    return save(dict(tensors), metadata={"g2interp": json.dumps(dict(meta), sort_keys=True)})


def safetensors_metadata(data: bytes) -> dict[str, Any]:
    """The metadata :func:`save_tensors` wrote (an 8-byte little-endian header length, then JSON)."""
    (header_len,) = struct.unpack("<Q", data[:8])
    raw = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    return json.loads(raw["g2interp"]) if "g2interp" in raw else raw


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ShardFile:
    """One hook's file of one shard."""

    path: str
    """Path relative to the store folder."""
    sha256: str
    """Checksum of the file's bytes."""
    size: int
    """File size in bytes."""


@dataclass(frozen=True)
class ShardRecord:
    """A durable shard: which contexts it holds and its file per hook."""

    index: int
    """Shard number; shard i holds the contexts of span i of ``PackedContexts.shard_spans``."""
    context_start: int
    """First context in the shard."""
    context_end: int
    """One past the last context in the shard."""
    rows: int
    """Activation rows (kept positions) in the shard, the same for every hook."""
    files: Mapping[str, ShardFile]
    """File per hook name."""
    sum_squared_norm: Mapping[str, float]
    """Per hook: sum over rows of the squared L2 norm (fp64, of the fp32 activations)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ShardRecord:
        return cls(**{**obj, "files": {h: ShardFile(**f) for h, f in obj["files"].items()}})


@dataclass(frozen=True)
class HookInfo:
    """One stored hook."""

    folder: str
    """Folder (relative to the store) holding the hook's shards."""
    shape: tuple[int, ...]
    """Per-token shape at the hook (e.g. [n_heads, d_head] for ``attn.hook_z``); rows are flattened."""
    rows: int = 0
    """Rows in the shards written so far."""
    mean_squared_norm: float | None = None
    """Mean over rows of the squared L2 norm of the activations (None before any shard)."""

    @property
    def d(self) -> int:
        """Width of a stored row."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Manifest:
    """Everything a store records about itself (``manifest.json``)."""

    identity: Mapping[str, Any]
    """The capture settings and fingerprints that define the contents; resuming must match them."""
    model: Mapping[str, Any]
    """Model source, fingerprint and shape (informational beyond the fingerprint)."""
    corpus: Mapping[str, Any]
    """Corpus source, fingerprint, counts, and the contexts file's checksum."""
    hooks: Mapping[str, HookInfo]
    """Stored hooks, with their normalisation statistics."""
    context_length: int
    """Tokens per context."""
    dtype: str
    """Storage dtype of the activations."""
    n_contexts: int
    """Contexts packed from the corpus."""
    n_shards: int
    """Shards a complete store holds."""
    n_eval: int = 0
    """Contexts held out for evaluation: the last ``n_eval`` of the contexts file, in shards of their own."""
    shards: tuple[ShardRecord, ...] = ()
    """Durable shards, sorted by index."""
    complete: bool = False
    """True once every shard is durable and the rank journals are merged."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Free-form notes (not compared on resume)."""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def fingerprint(self) -> str:
        """What the activations are: model, corpus, packing and exclusions (not the hooks, dtype or
        folder), as :func:`activations_fingerprint` computes it for an on-the-fly source too."""
        identity = dict(self.identity)
        model_fp, corpus_fp = identity.pop("model_fingerprint"), identity.pop("corpus_fingerprint")
        contexts = {k: v for k, v in identity.items() if k not in ("dtype", "hooks")}
        return activations_fingerprint(contexts, model_fp, corpus_fp)

    def missing_shards(self) -> list[int]:
        done = {s.index for s in self.shards}
        return [i for i in range(self.n_shards) if i not in done]

    def with_shards(self, records: Iterable[ShardRecord], *, complete: bool | None = None) -> Manifest:
        """A copy holding these shard records (deduplicated by index) with the statistics recomputed."""
        by_index = {r.index: r for r in (*self.shards, *records)}  # a new record replaces an old one
        shards = tuple(by_index[i] for i in sorted(by_index))
        rows = sum(s.rows for s in shards)
        hooks = {}
        for name, info in self.hooks.items():
            total = 0.0
            for s in shards:  # summed in shard order, so any split across ranks gives the same float
                total += s.sum_squared_norm[name]
            hooks[name] = replace(info, rows=rows, mean_squared_norm=(total / rows) if rows else None)
        done = len(shards) == self.n_shards if complete is None else complete
        return replace(self, shards=shards, hooks=hooks, complete=done)

    def to_json(self) -> dict[str, Any]:
        """The manifest's fields, its format marker, and (for readers) its rows, fingerprint and hook widths."""
        out = {"format": STORE_FORMAT, "version": STORE_VERSION, **dataclasses.asdict(self)}
        for name, info in out["hooks"].items():
            info["d"] = self.hooks[name].d
        return {**out, "rows": self.rows, "fingerprint": self.fingerprint}

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Manifest:
        if obj.get("format") != STORE_FORMAT:
            raise StoreError(f"not an activation store manifest (format {obj.get('format')!r})")
        if obj.get("version") != STORE_VERSION:
            raise StoreError(
                f"store format version {obj.get('version')} is not supported (this reads {STORE_VERSION}): "
                f"capture it again into a new folder"
            )
        fields = {k: v for k, v in obj.items() if k not in ("format", "version", "rows", "fingerprint")}
        hooks = {
            n: HookInfo(h["folder"], tuple(h["shape"]), h["rows"], h["mean_squared_norm"])
            for n, h in obj["hooks"].items()
        }
        shards = tuple(ShardRecord.from_json(s) for s in obj["shards"])
        return cls(**{**fields, "hooks": hooks, "shards": shards})

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.from_json(_read_json(path, "store manifest"))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read {what} {path}: {exc}") from exc


def journal_records(root: Path) -> tuple[list[ShardRecord], list[Path]]:
    """Shard records in the rank journals (``manifest.rank{r}.json``) of a store folder, and the journals."""
    journals = sorted(Path(root).glob(RANK_JOURNAL_GLOB))
    shards = [s for j in journals for s in _read_json(j, "rank journal")["shards"]]
    return [ShardRecord.from_json(s) for s in shards], journals


def journal_bytes(records: Iterable[ShardRecord]) -> bytes:
    shards = sorted(records, key=lambda r: r.index)
    return (json.dumps({"shards": [s.to_json() for s in shards]}, indent=1) + "\n").encode()


def activations_fingerprint(contexts_identity: Mapping[str, Any], model_fp: str, corpus_fp: str) -> str:
    """sha256 naming a set of activations: the packing settings, the model's and the corpus's fingerprints."""
    blob = json.dumps(
        {"contexts": dict(contexts_identity), "model": model_fp, "corpus": corpus_fp}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def identity_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: stored -> wanted`` lines for every setting that differs."""
    lines = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key, "<absent>"), wanted.get(key, "<absent>")
        if old != new:
            lines.append(f"{key}: store has {old!r}, this run asks for {new!r}")
    return lines
