"""The Gemma tokenizer: ids to text and back through the Rust ``tokenizers`` library.

A leaf module (nothing else of g2interp imported), so that the model and the loaders both use it
without importing each other; reading one from a GGUF file is in :mod:`g2interp.loading.tokenizer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer


class GemmaTokenizer:
    """Encodes text to ids and back; BOS is added here, never by the backend's post-processor."""

    def __init__(self, backend: Tokenizer, bos_token_id: int, eos_token_id: int, pad_token_id: int):
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self._plain = None  # a copy that reads control tokens as text, built on first use

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(
        self, text: str, *, prepend_bos: bool = True, special_tokens_as_text: bool = False
    ) -> list[int]:
        """Token ids of ``text``.

        ``special_tokens_as_text=True`` tokenises control-token strings in ``text`` (``<start_of_turn>``,
        ``<bos>``...) as ordinary characters, so user text can never inject structure into a template.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        backend = self._plain_backend() if special_tokens_as_text else self.backend
        ids = backend.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if prepend_bos else ids

    def encode_batch(
        self, texts: Sequence[str], *, prepend_bos: bool = True, special_tokens_as_text: bool = False
    ) -> list[list[int]]:
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"every text must be a str, got {type(t).__name__}")
        backend = self._plain_backend() if special_tokens_as_text else self.backend
        encoded = backend.encode_batch(list(texts), add_special_tokens=False)
        return [([self.bos_token_id] if prepend_bos else []) + e.ids for e in encoded]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def _plain_backend(self) -> Tokenizer:
        if self._plain is None:
            plain = Tokenizer.from_str(self.backend.to_str())
            plain.encode_special_tokens = True  # control-token strings are split like any other text
            self._plain = plain
        return self._plain

    @classmethod
    def from_file(
        cls, path: str | Path, bos_token_id: int, eos_token_id: int, pad_token_id: int
    ) -> GemmaTokenizer:
        path = Path(path)
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ValueError(f"cannot read tokenizer {path}: {exc}") from exc
        return cls(backend, bos_token_id, eos_token_id, pad_token_id)
