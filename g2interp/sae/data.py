"""Activation batches for SAE training straight from a model: corpus -> contexts -> capture -> batches.

A small, self-contained pipeline (the sharded activation store is the route for large runs):

1. :func:`read_texts` reads a JSONL file, or a folder of them, field ``text`` by default.
2. :func:`pack_contexts` joins the documents, each followed by EOS, into one token stream and cuts it
   into contexts of ``BOS + (context_length - 1)`` tokens; :func:`split_contexts` shuffles the
   contexts (seeded) and holds the last ones out for evaluation.
3. :func:`activation_rows` runs one forward pass per group of contexts for any number of hooks and
   keeps the rows of real tokens: BOS and EOS positions are dropped, as Gemma Scope does (BOS
   activations are outliers orders of magnitude larger than the rest). ``hook_z`` is flattened to
   ``n_heads * d_head``.
4. :func:`shuffled_batches` mixes rows through a buffer into ``[batch, d_in]`` batches on the fly;
   :func:`capture_rows` + :class:`ReplayBatches` keep a fixed set of rows in memory and replay it in
   a fresh seeded order each epoch (cheap when the model is the bottleneck, as on a CPU).

Data-parallel runs give each rank its own contexts (``contexts[rank::world_size]``) and a local batch
of ``batch_size // world_size`` rows; see :mod:`g2interp.sae.distributed`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from g2interp.activations.corpus import CorpusError, pack_texts

logger = logging.getLogger(__name__)

#: Corpus file suffix read by :func:`read_texts`.
CORPUS_SUFFIX = ".jsonl"


class CapturingLM(Protocol):
    """What the pipeline needs of a model (``HookedGemma`` has it)."""

    def capture(
        self, tokens: Tensor, names: Sequence[str], attention_mask: Tensor | None = None
    ) -> dict[str, Tensor]: ...


class SplitContexts(NamedTuple):
    """Contexts for training and held-out contexts for evaluation."""

    train: Tensor
    """[n_train, context_length] token ids."""
    eval: Tensor
    """[n_eval, context_length] token ids."""


def corpus_files(path: str | Path) -> list[Path]:
    """The file itself, or a folder's ``*.jsonl`` files (sorted, recursive, hidden ones skipped)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"corpus {root} does not exist")
    if root.is_file():
        return [root]
    files = sorted(
        p
        for p in root.rglob(f"*{CORPUS_SUFFIX}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise CorpusError(f"corpus folder {root} holds no {CORPUS_SUFFIX} files")
    return files


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Non-empty texts of a JSONL corpus (a file or a folder of files), in file then line order."""
    texts: list[str] = []
    for file in corpus_files(path):
        with open(file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{file}:{line_no} is not valid JSON: {exc}") from exc
                if not isinstance(row, dict) or text_field not in row:
                    raise CorpusError(f"{file}:{line_no} has no field {text_field!r}")
                text = row[text_field]
                if not isinstance(text, str):
                    raise CorpusError(f"{file}:{line_no}: field {text_field!r} is not a string")
                if text:
                    texts.append(text)
    if not texts:
        raise CorpusError(f"corpus {path} holds no text in field {text_field!r}")
    return texts


def pack_contexts(
    tokenizer: Any,
    texts: Sequence[str],
    context_length: int,
    *,
    max_contexts: int | None = None,
) -> Int[Tensor, "n_contexts context_length"]:
    """Contexts ``[BOS, t_1, ..., t_{L-1}]`` cut from the documents joined with EOS after each.

    The activation store's packing (:func:`g2interp.activations.corpus.pack_texts`) in the texts' order,
    without its padded last context: a document crossing a cut continues in the next context and the
    short tail of the stream is dropped. ``tokenizer`` is a :class:`~g2interp.loading.tokenizer.GemmaTokenizer`.
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}")
    step = 256  # documents per tokenizer call
    batches = (list(texts[start : start + step]) for start in range(0, len(texts), step))
    packed = pack_texts(tokenizer, batches, context_length, max_contexts=max_contexts)
    full = packed.tokens_NL[packed.lengths_N == context_length].long()
    if not len(full):
        raise CorpusError(f"the corpus is shorter than one context of {context_length} tokens")
    return full


def split_contexts(contexts: Int[Tensor, "n context_length"], n_eval: int, seed: int = 0) -> SplitContexts:
    """Shuffle the contexts (seeded) and hold out the last ``n_eval`` for evaluation.

    Training reads the shuffled contexts from the front, so neither set depends on the other's size
    (as long as training does not reach the held-out tail).
    """
    n = contexts.shape[0]
    if not 0 <= n_eval < n:
        raise ValueError(f"cannot hold out {n_eval} of {n} contexts and train on the rest")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = contexts[order]
    return SplitContexts(shuffled[: n - n_eval], shuffled[n - n_eval :])


def keep_mask(tokens_BQ: Int[Tensor, "batch pos"], exclude_ids: Iterable[int]) -> Bool[Tensor, "batch pos"]:
    """True where the token's activation is kept (its id is not one of ``exclude_ids``)."""
    keep_BQ = torch.ones_like(tokens_BQ, dtype=torch.bool)
    for token_id in exclude_ids:
        keep_BQ &= tokens_BQ != token_id
    return keep_BQ


def activation_rows(
    model: CapturingLM,
    contexts: Int[Tensor, "n context_length"],
    hooks: Sequence[str],
    *,
    batch_contexts: int = 8,
    exclude_ids: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Iterator[dict[str, Tensor]]:
    """Per forward pass of ``batch_contexts`` contexts: hook name -> rows ``[n_kept, width]`` on ``device``.

    Rows of one pass are aligned across hooks (row ``i`` of every hook is the same token).
    """
    if not hooks:
        raise ValueError("no hooks to capture")
    for start in range(0, contexts.shape[0], batch_contexts):
        tokens_BQ = contexts[start : start + batch_contexts]
        keep_BQ = keep_mask(tokens_BQ, exclude_ids)
        cache = model.capture(tokens_BQ, list(hooks))
        out = {}
        for name in hooks:
            act = cache[name]
            act_BQD = act.reshape(act.shape[0], act.shape[1], -1)  # hook_z: [B, Q, H, Dh] -> [B, Q, H*Dh]
            out[name] = act_BQD[keep_BQ.to(act.device)].to(device=device, dtype=dtype)
        yield out


def shuffled_batches(
    rows: Iterable[dict[str, Tensor]],
    batch_size: int,
    *,
    buffer_batches: int = 16,
    seed: int = 0,
) -> Iterator[dict[str, Tensor]]:
    """Mix incoming rows through a buffer of ``buffer_batches * batch_size`` rows; yield full batches.

    When the buffer is full it is shuffled and its first half is yielded; at the end of the stream the
    rest is shuffled and yielded, dropping the last incomplete batch. Every hook's rows get the same
    permutation, so batches stay aligned across hooks. Deterministic for a seed.
    """
    if batch_size <= 0 or buffer_batches < 2:
        raise ValueError("batch_size must be positive and buffer_batches >= 2")
    generator = torch.Generator().manual_seed(seed)
    capacity = buffer_batches * batch_size
    buffer: dict[str, Tensor] | None = None

    def drain(buf: dict[str, Tensor], n_out: int) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        n_rows = next(iter(buf.values())).shape[0]
        perm = torch.randperm(n_rows, generator=generator)
        mixed = {k: v[perm] for k, v in buf.items()}
        batches = [
            {k: v[i * batch_size : (i + 1) * batch_size] for k, v in mixed.items()} for i in range(n_out)
        ]
        return batches, {k: v[n_out * batch_size :] for k, v in mixed.items()}

    for chunk in rows:
        buffer = chunk if buffer is None else {k: torch.cat([buffer[k], chunk[k]]) for k in buffer}
        if next(iter(buffer.values())).shape[0] >= capacity:
            out, buffer = drain(buffer, buffer_batches // 2)
            yield from out
    if buffer is not None:
        n_left = next(iter(buffer.values())).shape[0] // batch_size
        if n_left:
            out, _ = drain(buffer, n_left)
            yield from out


def capture_rows(
    model: CapturingLM,
    contexts: Int[Tensor, "n context_length"],
    hooks: Sequence[str],
    n_rows: int,
    *,
    batch_contexts: int = 8,
    exclude_ids: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Exactly ``n_rows`` rows per hook, captured from the contexts in order (raises if they run out)."""
    parts: dict[str, list[Tensor]] = {name: [] for name in hooks}
    have = 0
    for chunk in activation_rows(
        model,
        contexts,
        hooks,
        batch_contexts=batch_contexts,
        exclude_ids=exclude_ids,
        dtype=dtype,
        device=device,
    ):
        for name in hooks:
            parts[name].append(chunk[name])
        have += next(iter(chunk.values())).shape[0]
        logger.debug("captured %d / %d rows", min(have, n_rows), n_rows)
        if have >= n_rows:
            return {name: torch.cat(p)[:n_rows] for name, p in parts.items()}
    raise CorpusError(
        f"the {contexts.shape[0]} contexts give {have} rows; {n_rows} are needed (use a larger corpus, "
        f"fewer tokens or more epochs)"
    )


class ReplayBatches:
    """Batches of a fixed set of rows in memory, a fresh seeded permutation per epoch.

    Call it with a step to get the batches from that step on (the trainer's ``batches_from`` form,
    which makes a resumed run read no row twice). Batch ``i`` of epoch ``e`` is rows
    ``perm_e[i*B:(i+1)*B]``; the last incomplete batch of an epoch is dropped.
    """

    def __init__(self, rows: Float[Tensor, "n d_in"], batch_size: int, *, seed: int = 0):
        if rows.dim() != 2:
            raise ValueError(f"rows must be [n, d_in], got shape {tuple(rows.shape)}")
        if rows.shape[0] < batch_size:
            raise ValueError(f"{rows.shape[0]} rows are less than one batch of {batch_size}")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = rows.shape[0] // batch_size

    def permutation(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # no two (seed, epoch) alike
        return torch.randperm(self.rows.shape[0], generator=generator)

    def __call__(self, start: int = 0) -> Iterator[Tensor]:
        epoch, index = divmod(start, self.batches_per_epoch)
        while True:
            perm = self.permutation(epoch)
            for i in range(index, self.batches_per_epoch):
                yield self.rows[perm[i * self.batch_size : (i + 1) * self.batch_size]].float()
            epoch, index = epoch + 1, 0


def hook_shape(model: Any, hook_name: str) -> tuple[int, ...]:
    """A hook's activation shape per token (``(n_heads, d_head)`` for ``hook_z``), from a 2-token run."""
    bos = model.tokenizer.bos_token_id if getattr(model, "tokenizer", None) is not None else 0
    tokens = torch.full((1, 2), bos, dtype=torch.long)
    return tuple(model.capture(tokens, [hook_name])[hook_name].shape[2:])
