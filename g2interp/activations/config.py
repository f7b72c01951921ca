"""``CaptureConfig``: everything that defines one activation capture, validated once."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import asdict, dataclass, fields
from functools import cache
from itertools import pairwise
from typing import Any

import torch

from g2interp.constants import EMBEDDED_MODEL

#: Storage dtypes a store accepts, by the name written in its manifest.
STORE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: Positions a capture can leave out: the context's leading BOS, document-separating EOS, padding.
EXCLUDABLE = ("bos", "eos", "pad")


@dataclass(frozen=True)
class CaptureConfig:
    """One capture: which model, which corpus, which hooks, where, and how the store is laid out."""

    data: str
    """Corpus: a .jsonl/.json/.txt/.parquet file, or a folder of them (read with ``datasets``)."""
    hooks: tuple[str, ...]
    """TransformerLens hook names to store, e.g. ``blocks.6.hook_resid_post`` (one folder each)."""
    out: str
    """Store folder: created when absent, resumed when it holds this same capture, else refused."""
    model: str = EMBEDDED_MODEL
    """Model source for ``load_model``: the embedded ``gemma-3-270m``, a model folder, a .gguf or a hub id."""
    text_field: str = "text"
    """Column holding the text in JSONL/JSON/parquet files (.txt files are one document each)."""
    context_length: int = 1024
    """Tokens per context, the leading BOS included."""
    max_contexts: int | None = None
    """Stop after this many contexts; None packs the whole corpus."""
    batch_size: int = 8
    """Contexts per forward pass (does not change what is stored)."""
    contexts_per_shard: int = 32
    """Contexts whose activations go into one shard file per hook."""
    dtype: str = "float32"
    """Storage dtype: float32, bfloat16 or float16 (float16 overflows on large residual streams)."""
    seed: int = 0
    """Seed of the document order; the same seed packs the same contexts."""
    shuffle_documents: bool = True
    """Shuffle documents (with ``seed``) before packing; False keeps the corpus order."""
    exclude: tuple[str, ...] = ("bos", "pad")
    """Positions not stored: any of ``bos`` (each context's first token), ``eos`` (separators), ``pad``."""
    device: str | None = None
    """Device to run the model on; None picks CUDA when present, else CPU."""
    model_dtype: str | None = None
    """Dtype to run the model in; None: bfloat16 on CUDA, float32 on CPU."""
    queue_size: int = 2
    """Finished shards that may wait for the writer thread before compute blocks (bounds memory)."""
    progress: bool = True
    """Show a tqdm progress bar (tokens, tokens/s) on rank 0."""

    def __post_init__(self) -> None:
        for name in ("data", "out", "model", "text_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
        if not hooks or not all(isinstance(h, str) and h for h in hooks):
            raise ValueError(f"hooks must be one or more non-empty hook names, got {self.hooks!r}")
        duplicates = sorted({h for h in hooks if hooks.count(h) > 1})
        if duplicates:
            raise ValueError(f"hooks lists {duplicates} more than once")
        object.__setattr__(self, "hooks", hooks)
        for name in ("context_length", "batch_size", "contexts_per_shard", "queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.context_length < 2:
            raise ValueError(
                f"context_length must be at least 2 (BOS and one token), got {self.context_length}"
            )
        if self.max_contexts is not None and (
            not isinstance(self.max_contexts, int) or self.max_contexts < 1
        ):
            raise ValueError(f"max_contexts must be a positive integer or None, got {self.max_contexts!r}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)}, got {self.dtype!r}")
        if self.model_dtype is not None and self.model_dtype not in (*STORE_DTYPES, "float64"):
            raise ValueError(
                f"model_dtype must be None or one of {sorted(STORE_DTYPES)}, got {self.model_dtype!r}"
            )
        exclude = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        unknown = [e for e in exclude if e not in EXCLUDABLE]
        if unknown:
            raise ValueError(f"exclude may hold {EXCLUDABLE}; got unknown {unknown}")
        object.__setattr__(self, "exclude", tuple(sorted(set(exclude), key=EXCLUDABLE.index)))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The storage dtype as a torch dtype."""
        return STORE_DTYPES[self.dtype]

    def store_identity(self) -> dict[str, Any]:
        """The fields that define a store's contents; a resumed capture must repeat them exactly.

        Paths, batch size, device, queue size and progress bars are left out: they change how the
        store is produced, not what it holds.
        """
        keep = (
            "text_field",
            "context_length",
            "max_contexts",
            "contexts_per_shard",
            "dtype",
            "seed",
            "shuffle_documents",
        )
        out = {k: getattr(self, k) for k in keep}
        out["hooks"] = sorted(self.hooks)
        out["exclude"] = list(self.exclude)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        out = asdict(self)
        out["hooks"] = list(self.hooks)
        out["exclude"] = list(self.exclude)
        return out


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each dataclass field (used for ``--help``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    missing = [f.name for f in fields(cls) if f.name not in docs]
    if missing:
        raise TypeError(f"{cls.__name__} fields without a docstring: {missing}")
    return docs
