"""``ContextsConfig`` (corpus -> contexts, held-out split, excluded positions) and ``CaptureConfig`` (a
capture into a store): everything that defines the activations, validated once."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from g2interp.cli_config import require_ints, require_strings
from g2interp.constants import EMBEDDED_MODEL

#: Storage dtypes a store accepts, by the name written in its manifest.
STORE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: Positions a capture can leave out: the context's leading BOS, document-separating EOS, padding.
EXCLUDABLE = ("bos", "eos", "pad")


@dataclass(frozen=True, kw_only=True)
class ContextsConfig:
    """How a corpus becomes contexts, which of them are held out, and which positions count: the one
    packing every stage shares (the store records it; on-the-fly sources repeat it)."""

    data: str
    """Corpus: a .jsonl/.json/.txt/.parquet file (.jsonl/.json/.txt may be gzipped), or a folder of them."""
    text_field: str = "text"
    """Column holding the text in JSONL/JSON/parquet files (.txt files are one document each)."""
    context_length: int = 1024
    """Tokens per context, the leading BOS included."""
    max_contexts: int | None = None
    """Stop packing after this many contexts (held-out ones included); None packs the whole corpus."""
    eval_contexts: int = 64
    """Contexts held out for evaluation and dashboards: a seeded random choice, never trained on."""
    seed: int = 0
    """Seed of the document order and of the held-out choice; the same seed packs the same contexts."""
    shuffle_documents: bool = True
    """Shuffle documents (with ``seed``) before packing; False keeps the corpus order."""
    exclude: tuple[str, ...] = EXCLUDABLE
    """Positions left out everywhere (training, evaluation, dashboards): any of ``bos`` (each context's
    first token), ``eos`` (document separators), ``pad`` (Gemma Scope leaves out all three)."""
    contexts_per_shard: int = 32
    """Contexts per shard (a store's file per hook, and the unit batches are shuffled in)."""

    def __post_init__(self) -> None:
        require_strings(self, "data", "text_field")
        require_ints(self, "context_length", "contexts_per_shard")
        require_ints(self, "eval_contexts", "seed", minimum=0)
        if self.context_length < 2:
            raise ValueError(
                f"context_length must be at least 2 (BOS and one token), got {self.context_length}"
            )
        if self.max_contexts is not None:
            require_ints(self, "max_contexts")
        if self.max_contexts is not None and self.eval_contexts >= self.max_contexts:
            raise ValueError(
                f"eval_contexts ({self.eval_contexts}) leaves none of max_contexts ({self.max_contexts}) to train on"
            )
        exclude = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        unknown = [e for e in exclude if e not in EXCLUDABLE]
        if unknown:
            raise ValueError(f"exclude may hold {EXCLUDABLE}; got unknown {unknown}")
        object.__setattr__(self, "exclude", tuple(sorted(set(exclude), key=EXCLUDABLE.index)))

    def contexts_identity(self) -> dict[str, Any]:
        """The fields that define the contexts and rows (the corpus path aside: its fingerprint counts)."""
        out = {f.name: getattr(self, f.name) for f in fields(ContextsConfig) if f.name != "data"}
        out["exclude"] = list(self.exclude)
        return out

    def contexts_config(self) -> ContextsConfig:
        """Just the packing (a capture's, without the capture settings)."""
        return ContextsConfig(**{f.name: getattr(self, f.name) for f in fields(ContextsConfig)})


@dataclass(frozen=True, kw_only=True)
class CaptureConfig(ContextsConfig):
    """One capture: the packing, which model, which hooks, where, and how the store is laid out."""

    hooks: tuple[str, ...]
    """TransformerLens hook names to store, e.g. ``blocks.6.hook_resid_post`` (one folder each)."""
    out: str
    """Store folder: created when absent, resumed when it holds this same capture, else refused."""
    model: str = EMBEDDED_MODEL
    """Model source for ``load_model``: the embedded ``gemma-3-270m``, a model folder, a .gguf or a hub id."""
    batch_contexts: int = 8
    """Contexts per forward pass of the model."""
    dtype: str = "float32"
    """Storage dtype: float32, bfloat16 or float16 (float16 overflows on large residual streams)."""
    device: str | None = None
    """Device to run the model on; None picks CUDA when present, else CPU."""
    model_dtype: str | None = None
    """Dtype to run the model in; None: bfloat16 on CUDA, float32 on CPU."""
    queue_size: int = 2
    """Finished shards that may wait for the writer thread before compute blocks (bounds memory)."""
    progress: bool = True
    """Show a tqdm progress bar (tokens, tokens/s) on rank 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_strings(self, "out", "model")
        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
        if not hooks or not all(isinstance(h, str) and h for h in hooks):
            raise ValueError(f"hooks must be one or more non-empty hook names, got {self.hooks!r}")
        duplicates = sorted({h for h in hooks if hooks.count(h) > 1})
        if duplicates:
            raise ValueError(f"hooks lists {duplicates} more than once")
        object.__setattr__(self, "hooks", hooks)
        require_ints(self, "batch_contexts", "queue_size")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)}, got {self.dtype!r}")
        if self.model_dtype is not None and self.model_dtype not in (*STORE_DTYPES, "float64"):
            raise ValueError(
                f"model_dtype must be None or one of {sorted(STORE_DTYPES)}, got {self.model_dtype!r}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        """The storage dtype as a torch dtype."""
        return STORE_DTYPES[self.dtype]

    def store_identity(self) -> dict[str, Any]:
        """The fields that define a store's contents; a resumed capture must repeat them exactly.

        Paths, batch size, device, queue size and progress bars are left out: they change how the
        store is produced, not what it holds.
        """
        return {**self.contexts_identity(), "dtype": self.dtype, "hooks": sorted(self.hooks)}
