"""g2interp: interpretability and safety toolkit for Gemma 2 / Gemma 3 text models.

Subpackages: ``g2interp.activations`` (activation store and sources), ``g2interp.sae`` (JumpReLU SAEs),
``g2interp.moderation`` (ShieldGemma-style harm scoring), ``g2interp.dashboards`` (feature dashboards).
"""

from g2interp.activations import (
    ActivationSource,
    ActivationStore,
    CaptureConfig,
    ContextsConfig,
    OnTheFlySource,
    capture,
)
from g2interp.config import AttentionType, ModelConfig
from g2interp.loading import CheckpointError, load_model
from g2interp.model import CacheResult, GenerationOutput, HookedGemma, KVCache, TokenBatch
from g2interp.moderation import GuardedGeneration, Moderator, Policy, Verdict, guarded_generate
from g2interp.sae import (
    JumpReLUSAE,
    SAETrainer,
    SAETrainingConfig,
    Steering,
    delta_lm_loss,
    evaluate_on_source,
    evaluate_sae,
    load_gemma_scope,
    plan_saes,
    recipe,
    train_saes,
)
from g2interp.tokenizer import GemmaTokenizer

__version__ = "0.1.0"

__all__ = [
    "ActivationSource",
    "ActivationStore",
    "AttentionType",
    "CacheResult",
    "CaptureConfig",
    "CheckpointError",
    "ContextsConfig",
    "GemmaTokenizer",
    "GenerationOutput",
    "GuardedGeneration",
    "HookedGemma",
    "JumpReLUSAE",
    "KVCache",
    "ModelConfig",
    "Moderator",
    "OnTheFlySource",
    "Policy",
    "SAETrainer",
    "SAETrainingConfig",
    "Steering",
    "TokenBatch",
    "Verdict",
    "__version__",
    "capture",
    "delta_lm_loss",
    "evaluate_on_source",
    "evaluate_sae",
    "guarded_generate",
    "load_gemma_scope",
    "load_model",
    "plan_saes",
    "recipe",
    "train_saes",
]
