"""g2interp: interpretability and safety toolkit for Gemma 2 / Gemma 3 text models."""

from g2interp.config import AttentionType, ModelConfig
from g2interp.loading import CheckpointError, GemmaTokenizer, load_model
from g2interp.model import CacheResult, GenerationOutput, HookedGemma, KVCache, TokenBatch

__version__ = "0.1.0"

__all__ = [
    "AttentionType",
    "CacheResult",
    "CheckpointError",
    "GemmaTokenizer",
    "GenerationOutput",
    "HookedGemma",
    "KVCache",
    "ModelConfig",
    "TokenBatch",
    "__version__",
    "load_model",
]
