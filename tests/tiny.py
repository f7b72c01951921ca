"""Pieces shared by the tests: byte-level tokenizers, a one-thread guard, tiny checkpoints, a free port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

PAD, EOS, BOS = 0, 1, 2
CONTROL = ("<start_of_turn>", "<end_of_turn>")
CHAT_VOCAB_SIZE = 3 + 256 + len(CONTROL) + 2  # specials, bytes, turn markers, "Yes" and "No"


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny matmuls run far slower with two OpenMP threads on a shared two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def byte_tokenizer(chat: bool = False) -> Tokenizer:
    """Byte-level BPE without merges: one token per UTF-8 byte, so any text round-trips exactly.

    ``chat`` adds Gemma's turn markers (special) and 'Yes' / 'No' (plain): what moderation needs.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS}
    vocab.update({ch: 3 + i for i, ch in enumerate(sorted(alphabet))})
    control = CONTROL if chat else ()
    if chat:
        for tok in (*CONTROL, "Yes", "No"):
            vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<eos>", "<bos>", *control)])
    if chat:
        backend.add_tokens([AddedToken("Yes", special=False), AddedToken("No", special=False)])
    return backend


def save_chat_checkpoint(folder: Path, kind: str = "gemma2", seed: int = 0, **overrides):
    """A random tiny transformers Gemma saved with the chat tokenizer; returns the transformers model."""
    from tests.conftest import make_hf_model

    hf = make_hf_model(kind, seed=seed, vocab_size=CHAT_VOCAB_SIZE, max_position_embeddings=2048, **overrides)
    hf.save_pretrained(folder)
    byte_tokenizer(chat=True).save(str(Path(folder) / "tokenizer.json"))
    return hf
