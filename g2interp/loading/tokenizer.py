"""Reading a Gemma tokenizer from a checkpoint: ``tokenizer.json`` for folders, GGUF metadata for ``.gguf``.

The GGUF vocabulary is converted exactly as ``transformers`` converts it (so the ids equal
``AutoTokenizer.from_pretrained(..., gguf_file=...)``). The tokenizer itself is :mod:`g2interp.tokenizer`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from g2interp.files import atomic_write_text
from g2interp.tokenizer import GemmaTokenizer

__all__ = ["GemmaTokenizer", "tokenizer_from_gguf"]  # GemmaTokenizer re-exported for older imports

logger = logging.getLogger(__name__)


def tokenizer_from_gguf(
    path: str | Path, metadata: Mapping[str, Any], cache_file: Path | None = None
) -> GemmaTokenizer:
    """Build the tokenizer described by a GGUF file's metadata (cached as ``tokenizer.json``)."""
    ids = {
        "bos_token_id": int(metadata.get("tokenizer.ggml.bos_token_id", 2)),
        "eos_token_id": int(metadata.get("tokenizer.ggml.eos_token_id", 1)),
        "pad_token_id": int(metadata.get("tokenizer.ggml.padding_token_id", 0)),
    }
    if cache_file is not None and cache_file.exists():
        return GemmaTokenizer.from_file(cache_file, **ids)
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer,
        get_gguf_tokenizer,
    )

    path = Path(path)
    logger.info("converting the GGUF vocabulary of %s (cached afterwards)", path.name)
    architecture, tokenizer_dict, _ = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    if cache_file is not None:
        atomic_write_text(cache_file, backend.to_str())
    return GemmaTokenizer(backend, **ids)
