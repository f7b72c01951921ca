"""g2interp: interpretability and safety toolkit for Gemma 2 / Gemma 3 text models.

Subpackages: ``g2interp.activations`` (activation store), ``g2interp.sae`` (JumpReLU SAEs).
"""

from g2interp.activations import ActivationStore, CaptureConfig, OnTheFlyBatches, StoreBatches, capture
from g2interp.config import AttentionType, ModelConfig
from g2interp.loading import CheckpointError, GemmaTokenizer, load_model
from g2interp.model import CacheResult, GenerationOutput, HookedGemma, KVCache, TokenBatch
from g2interp.sae import JumpReLUSAE, SAETrainer, SAETrainingConfig, delta_lm_loss, evaluate_sae

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "AttentionType",
    "CacheResult",
    "CaptureConfig",
    "CheckpointError",
    "GemmaTokenizer",
    "GenerationOutput",
    "HookedGemma",
    "JumpReLUSAE",
    "KVCache",
    "ModelConfig",
    "OnTheFlyBatches",
    "SAETrainer",
    "SAETrainingConfig",
    "StoreBatches",
    "TokenBatch",
    "__version__",
    "capture",
    "delta_lm_loss",
    "evaluate_sae",
    "load_model",
]
