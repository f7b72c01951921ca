"""The hooked Gemma decoder."""

from g2interp.model.gemma import CacheResult, HookedGemma, TokenBatch
from g2interp.model.generation import GenerationOutput
from g2interp.model.kv_cache import KVCache

__all__ = ["CacheResult", "GenerationOutput", "HookedGemma", "KVCache", "TokenBatch"]
