"""g2interp: interpretability and safety toolkit for Gemma 2 / Gemma 3 text models.

Subpackages: ``g2interp.activations`` (activation store), ``g2interp.sae`` (JumpReLU SAEs),
``g2interp.moderation`` (ShieldGemma-style harm scoring), ``g2interp.dashboards`` (feature dashboards).
"""

from g2interp.activations import ActivationStore, CaptureConfig, OnTheFlyBatches, StoreBatches, capture
from g2interp.config import AttentionType, ModelConfig
from g2interp.loading import CheckpointError, GemmaTokenizer, load_model
from g2interp.model import CacheResult, GenerationOutput, HookedGemma, KVCache, TokenBatch
from g2interp.moderation import GuardedGeneration, Moderator, Policy, Verdict, guarded_generate
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
    "GuardedGeneration",
    "HookedGemma",
    "JumpReLUSAE",
    "KVCache",
    "ModelConfig",
    "Moderator",
    "OnTheFlyBatches",
    "Policy",
    "SAETrainer",
    "SAETrainingConfig",
    "StoreBatches",
    "TokenBatch",
    "Verdict",
    "__version__",
    "capture",
    "delta_lm_loss",
    "evaluate_sae",
    "guarded_generate",
    "load_model",
]
