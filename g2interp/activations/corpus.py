"""Corpus -> fixed-length contexts: find the files, read them with ``datasets``, tokenise, pack, hold out.

Packing (deterministic for a seed): documents in a seeded order, each followed by the model's
separator (EOS), are joined into one token stream; the stream is cut into pieces of
``context_length - 1`` tokens and each piece gets a leading BOS. A document that crosses a cut
continues in the next context, so no token is lost at document borders. Only the last context may
be short; it is right-padded and its real length recorded.

Holding out (:func:`hold_out`): the packed contexts are put in a seeded random order and the last
``eval_contexts`` of it are the evaluation split, so neither split is a run of neighbouring documents.
:func:`prepare_contexts` does both, from a :class:`~g2interp.activations.config.ContextsConfig`; it is
the only packing the stages use.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Int
from safetensors.torch import load
from torch import Tensor

from g2interp.activations.config import ContextsConfig
from g2interp.activations.manifest import safetensors_metadata, save_tensors
from g2interp.tokenizer import GemmaTokenizer

logger = logging.getLogger(__name__)

#: File suffix -> ``datasets`` builder reading it (``.gz`` of the text kinds is read as well).
CORPUS_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}
#: Splits of a store and of an on-the-fly source.
SPLITS = ("train", "eval")
_TOKENIZE_BATCH = 256  # documents per tokenizer call
_METADATA = ("bos_token_id", "eos_token_id", "pad_token_id", "n_documents", "n_eval")  # of the contexts file


class CorpusError(ValueError):
    """A corpus is missing, empty or unreadable."""


@dataclass(frozen=True)
class PackedContexts:
    """Token ids of packed contexts: [BOS, t1, ..., t_{L-1}], the last one possibly padded."""

    tokens_NL: Int[Tensor, "n_contexts context_length"]
    """Token ids (int32); padding after ``lengths_N[i]`` holds the pad id."""
    lengths_N: Int[Tensor, " n_contexts"]
    """Real tokens per context (BOS included); ``context_length`` except maybe the last."""
    bos_token_id: int
    """Id of the BOS every context starts with."""
    eos_token_id: int
    """Id of the separator that follows every document."""
    pad_token_id: int
    """Id filling the short last context."""
    n_documents: int
    """Documents read (with ``max_contexts``, the last tokenizer batch may reach past the last context)."""
    n_eval: int = 0
    """The last ``n_eval`` contexts are the held-out evaluation split; the others are for training."""

    def __post_init__(self) -> None:
        if self.tokens_NL.dim() != 2 or self.lengths_N.shape != self.tokens_NL.shape[:1]:
            raise ValueError(
                f"tokens_NL {tuple(self.tokens_NL.shape)} and lengths_N {tuple(self.lengths_N.shape)} do not match"
            )
        if not 0 <= self.n_eval <= len(self):
            raise ValueError(f"n_eval {self.n_eval} is not within the {len(self)} contexts")

    def __len__(self) -> int:
        return self.tokens_NL.shape[0]

    @property
    def n_train(self) -> int:
        return len(self) - self.n_eval

    def split_range(self, split: str) -> range:
        """Indices of the contexts of ``split`` (``train`` or ``eval``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return range(0, self.n_train) if split == "train" else range(self.n_train, len(self))

    def shard_spans(self, contexts_per_shard: int) -> list[tuple[int, int]]:
        """Context ranges of the shards: the training contexts cut every ``contexts_per_shard``, then
        the held-out ones likewise, so that no shard mixes the splits (shard ``i`` is span ``i``)."""
        spans = []
        for split in SPLITS:
            r = self.split_range(split)
            spans += [
                (s, min(s + contexts_per_shard, r.stop)) for s in range(r.start, r.stop, contexts_per_shard)
            ]
        return spans

    @property
    def context_length(self) -> int:
        return self.tokens_NL.shape[1]

    @property
    def n_tokens(self) -> int:
        """Real tokens in all contexts (BOS included, padding not)."""
        return int(self.lengths_N.sum())

    def attention_mask(self, start: int, end: int) -> Int[Tensor, "batch context_length"] | None:
        """1 on real tokens of contexts ``start:end``; None when none of them is padded."""
        lengths = self.lengths_N[start:end]
        if bool((lengths == self.context_length).all()):
            return None
        return (torch.arange(self.context_length)[None] < lengths[:, None].long()).long()

    def keep_mask(self, start: int, end: int, exclude: Sequence[str]) -> Bool[Tensor, "batch context_length"]:
        """Positions of contexts ``start:end`` whose activations are kept (``exclude``: bos, eos, pad)."""
        tokens = self.tokens_NL[start:end]
        position = torch.arange(self.context_length)[None]
        real = position < self.lengths_N[start:end, None].long()
        keep = real.clone() if "pad" in exclude else torch.ones_like(real)
        if "bos" in exclude:
            keep[:, 0] = False
        if "eos" in exclude:
            keep &= ~((tokens == self.eos_token_id) & real)
        return keep

    def to_bytes(self) -> bytes:
        """safetensors bytes (ids and lengths; the special ids and counts in the metadata)."""
        tensors = {"tokens": self.tokens_NL.contiguous(), "lengths": self.lengths_N.contiguous()}
        return save_tensors(tensors, {k: getattr(self, k) for k in _METADATA})

    @classmethod
    def from_bytes(cls, data: bytes) -> PackedContexts:
        tensors, meta = load(data), safetensors_metadata(data)
        return cls(tensors["tokens"], tensors["lengths"], **{k: int(meta[k]) for k in _METADATA})


def _kind(path: Path) -> str:
    """The corpus suffix of a file: ``.jsonl`` for ``x.jsonl`` and ``x.jsonl.gz``; '' if none."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        inner = suffixes[-2] if len(suffixes) > 1 else ""
        return inner if inner in (".jsonl", ".json", ".txt") else ""
    return path.suffix if path.suffix in CORPUS_BUILDERS else ""


def corpus_files(data: str | Path) -> list[Path]:
    """The corpus files of a path: the file itself, or a folder's supported files (sorted, recursive)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist")
    if path.is_file():
        if not _kind(path):
            raise CorpusError(
                f"corpus file {path} is not one of {sorted(CORPUS_BUILDERS)} (or .gz of the text kinds)"
            )
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and _kind(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise CorpusError(f"corpus folder {path} holds no {sorted(CORPUS_BUILDERS)} files")
    builders = {CORPUS_BUILDERS[_kind(p)] for p in files}
    if len(builders) > 1:
        raise CorpusError(
            f"corpus folder {path} mixes file kinds {sorted(builders)}; keep one kind per corpus"
        )
    return files


def corpus_fingerprint(data: str | Path, text_field: str) -> str:
    """sha256 over the files' names (relative to the corpus root), contents and the text field."""
    root = Path(data).expanduser()
    digest = hashlib.sha256(f"text_field={text_field}\n".encode())
    for path in corpus_files(root):
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        file_digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                file_digest.update(block)
        digest.update(f"{rel}\t{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def load_documents(data: str | Path, text_field: str = "text"):
    """The corpus as a ``datasets.Dataset`` with its text in column ``text_field`` (``text`` for .txt)."""
    from datasets import load_dataset

    files = corpus_files(data)
    builder = CORPUS_BUILDERS[_kind(files[0])]
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        dataset = load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable or empty files
        raise CorpusError(f"cannot read corpus {data} with datasets' {builder!r} loader: {exc}") from exc
    field = "text" if builder == "text" else text_field
    if len(dataset) and field not in dataset.column_names:
        raise CorpusError(f"corpus {data} has no field {field!r}; its columns are {dataset.column_names}")
    return dataset, field


def iter_texts(dataset, field: str, order: np.ndarray) -> Iterator[list[str]]:
    """Batches of non-empty texts in ``order`` (None and empty strings skipped)."""
    for start in range(0, len(order), _TOKENIZE_BATCH):
        idx = order[start : start + _TOKENIZE_BATCH].tolist()
        texts = dataset[idx][field]
        batch = []
        for i, text in zip(idx, texts, strict=True):
            if text is None or text == "":
                continue
            if not isinstance(text, str):
                raise CorpusError(f"document {i} has a {type(text).__name__} in field {field!r}, not text")
            batch.append(text)
        if batch:
            yield batch


def document_order(n_documents: int, seed: int, shuffle: bool) -> np.ndarray:
    """Indices of documents in packing order."""
    if not shuffle:
        return np.arange(n_documents)
    return np.random.default_rng(seed).permutation(n_documents)


def pack_corpus(
    tokenizer: GemmaTokenizer,
    data: str | Path,
    context_length: int,
    *,
    text_field: str = "text",
    seed: int = 0,
    shuffle: bool = True,
    max_contexts: int | None = None,
) -> PackedContexts:
    """Tokenise a corpus in batches and pack it into contexts (see the module docstring)."""
    dataset, field = load_documents(data, text_field)
    if len(dataset) == 0:
        raise CorpusError(f"corpus {data} is empty: no documents")
    return pack_texts(
        tokenizer,
        iter_texts(dataset, field, document_order(len(dataset), seed, shuffle)),
        context_length,
        max_contexts=max_contexts,
        source=str(data),
    )


def pack_texts(
    tokenizer: GemmaTokenizer,
    text_batches: Iterator[list[str]],
    context_length: int,
    *,
    max_contexts: int | None = None,
    source: str = "corpus",
) -> PackedContexts:
    """Pack batches of texts, in the order given, into contexts of ``context_length`` tokens."""
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2, got {context_length}")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    body = context_length - 1  # tokens after the BOS
    pieces: list[np.ndarray] = []  # finished contexts' bodies
    pending = np.zeros(0, dtype=np.int64)  # stream tokens not yet placed
    n_documents = 0
    for texts in text_batches:
        ids = tokenizer.encode_batch(texts, prepend_bos=False)
        n_documents += len(ids)
        pending = np.concatenate([pending, *(np.asarray([*doc, eos], dtype=np.int64) for doc in ids)])
        n_full = len(pending) // body
        if max_contexts is not None:
            n_full = min(n_full, max_contexts - len(pieces))
        pieces.extend(pending[i * body : (i + 1) * body] for i in range(n_full))
        pending = pending[n_full * body :]
        if max_contexts is not None and len(pieces) >= max_contexts:
            pending = pending[:0]  # the rest of the stream is not used
            break
    if n_documents == 0:
        raise CorpusError(f"corpus {source} holds no text: every document is empty")
    lengths = [context_length] * len(pieces)
    if len(pending):
        lengths.append(len(pending) + 1)
        pieces.append(np.concatenate([pending, np.full(body - len(pending), pad, dtype=np.int64)]))
    tokens = np.concatenate([np.full((len(pieces), 1), bos, dtype=np.int64), np.stack(pieces)], axis=1)
    if tokens.max() > np.iinfo(np.int32).max:
        raise ValueError("token ids past int32 cannot be stored")
    packed = PackedContexts(
        torch.from_numpy(tokens.astype(np.int32)),
        torch.tensor(lengths, dtype=torch.int32),
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        n_documents=n_documents,
    )
    logger.info(
        "packed %d documents from %s into %d contexts of %d tokens (%d tokens)",
        n_documents,
        source,
        len(packed),
        context_length,
        packed.n_tokens,
    )
    return packed


def hold_out(packed: PackedContexts, n_eval: int, seed: int) -> PackedContexts:
    """The contexts in a seeded random order, the last ``n_eval`` of it held out (see the module docstring)."""
    n = len(packed)
    if not 0 <= n_eval < n:
        raise CorpusError(
            f"the corpus packs into {n} contexts: holding out {n_eval} for evaluation leaves none to train "
            f"on; lower eval_contexts or give more text"
        )
    order = torch.from_numpy(np.random.default_rng([seed, 1]).permutation(n))
    return replace(
        packed, tokens_NL=packed.tokens_NL[order], lengths_N=packed.lengths_N[order], n_eval=n_eval
    )


def prepare_contexts(tokenizer: GemmaTokenizer, cfg: ContextsConfig) -> PackedContexts:
    """The corpus of ``cfg`` packed and split as ``cfg`` says: the one packing of every stage."""
    packed = pack_corpus(
        tokenizer,
        cfg.data,
        cfg.context_length,
        text_field=cfg.text_field,
        seed=cfg.seed,
        shuffle=cfg.shuffle_documents,
        max_contexts=cfg.max_contexts,
    )
    return hold_out(packed, cfg.eval_contexts, cfg.seed)
