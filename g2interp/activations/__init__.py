"""Activation capture and the sharded activation store.

``capture(model, CaptureConfig(...))`` packs a corpus into contexts, runs one forward pass per
batch for any set of hooks and writes resumable, checksummed safetensors shards (a folder per
hook) with a JSON manifest. ``ActivationStore(path).batches(hook, batch_size)`` reads them back
shuffled; ``OnTheFlyBatches`` yields the same batches straight from the model.
"""

from g2interp.activations.capture import (
    CapturedRows,
    CaptureResult,
    capture,
    compute_shard,
    hook_shapes,
    iter_captured_rows,
    model_fingerprint,
    open_or_create_store,
    read_contexts,
)
from g2interp.activations.config import CaptureConfig
from g2interp.activations.corpus import (
    CorpusError,
    PackedContexts,
    corpus_fingerprint,
    pack_corpus,
    pack_texts,
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
)
from g2interp.activations.reader import (
    ActivationBatches,
    ActivationStore,
    IndexedBatch,
    OnTheFlyBatches,
    Rows,
    StoreBatches,
    plan_epoch,
)

__all__ = [
    "ActivationBatches",
    "ActivationStore",
    "CaptureConfig",
    "CaptureResult",
    "CapturedRows",
    "CorpusError",
    "HookInfo",
    "IndexedBatch",
    "Manifest",
    "OnTheFlyBatches",
    "PackedContexts",
    "Rows",
    "ShardCorruptError",
    "ShardMissingError",
    "ShardRecord",
    "StoreBatches",
    "StoreError",
    "StoreMismatchError",
    "StoreWriteError",
    "capture",
    "compute_shard",
    "corpus_fingerprint",
    "hook_shapes",
    "iter_captured_rows",
    "model_fingerprint",
    "open_or_create_store",
    "pack_corpus",
    "pack_texts",
    "plan_epoch",
    "read_contexts",
]
