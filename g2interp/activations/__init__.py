"""Activation capture, the sharded activation store, and the one interface stages read activations through.

``capture(model, CaptureConfig(...))`` packs a corpus into contexts (holding some out for evaluation),
runs one forward pass per batch for any set of hooks and writes resumable, checksummed safetensors
shards (a folder per hook) with a JSON manifest. ``ActivationStore(path)`` reads it back and
``OnTheFlySource(model, ContextsConfig(...))`` computes the same rows on demand; both are an
:class:`ActivationSource`: ``source.batches(hook, batch_size)`` (shuffled, resumable) and
``source.iter_rows(hook, split="eval")`` (in context order).
"""

from g2interp.activations.batches import ActivationBatches, IndexedBatch, Rows, plan_epoch
from g2interp.activations.capture import (
    CaptureResult,
    capture,
    compute_shard,
    hook_shapes,
    iter_captured_rows,
    model_fingerprint,
    open_or_create_store,
    read_contexts,
)
from g2interp.activations.config import CaptureConfig, ContextsConfig
from g2interp.activations.corpus import (
    CorpusError,
    PackedContexts,
    corpus_fingerprint,
    hold_out,
    pack_corpus,
    pack_texts,
    prepare_contexts,
)
from g2interp.activations.manifest import (
    HookInfo,
    Manifest,
    ShardCorruptError,
    ShardMissingError,
    ShardRecord,
    StoreError,
    StoreMismatchError,
    StoreWriteError,
    activations_fingerprint,
)
from g2interp.activations.source import ActivationSource, OnTheFlySource
from g2interp.activations.store import ActivationStore

__all__ = [
    "ActivationBatches",
    "ActivationSource",
    "ActivationStore",
    "CaptureConfig",
    "CaptureResult",
    "ContextsConfig",
    "CorpusError",
    "HookInfo",
    "IndexedBatch",
    "Manifest",
    "OnTheFlySource",
    "PackedContexts",
    "Rows",
    "ShardCorruptError",
    "ShardMissingError",
    "ShardRecord",
    "StoreError",
    "StoreMismatchError",
    "StoreWriteError",
    "activations_fingerprint",
    "capture",
    "compute_shard",
    "corpus_fingerprint",
    "hold_out",
    "hook_shapes",
    "iter_captured_rows",
    "model_fingerprint",
    "open_or_create_store",
    "pack_corpus",
    "pack_texts",
    "plan_epoch",
    "prepare_contexts",
    "read_contexts",
]
