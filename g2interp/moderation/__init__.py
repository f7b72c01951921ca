"""ShieldGemma-style harm scoring: policies, templates, generative and probe scorers, guarded generation."""

from g2interp.moderation.config import ModeratorConfig
from g2interp.moderation.features import TokenFeatures
from g2interp.moderation.generative import score_naive
from g2interp.moderation.guard import GuardedGeneration, guarded_generate
from g2interp.moderation.moderator import Moderator, Verdict
from g2interp.moderation.policies import (
    BUILTIN_POLICIES,
    DEFAULT_POLICIES,
    SHIELDGEMMA_POLICIES,
    UNSAFE,
    HarmType,
    Policy,
)
from g2interp.moderation.policy_fit import PolicyFit
from g2interp.moderation.probe import HeadConfig, HeadSet, ProbeHead
from g2interp.moderation.runner import PrefixRunner
from g2interp.moderation.template import EncodedText, TemplateEncoder, render

__all__ = [
    "BUILTIN_POLICIES",
    "DEFAULT_POLICIES",
    "SHIELDGEMMA_POLICIES",
    "UNSAFE",
    "EncodedText",
    "GuardedGeneration",
    "HarmType",
    "HeadConfig",
    "HeadSet",
    "Moderator",
    "ModeratorConfig",
    "Policy",
    "PolicyFit",
    "PrefixRunner",
    "ProbeHead",
    "TemplateEncoder",
    "TokenFeatures",
    "Verdict",
    "guarded_generate",
    "render",
    "score_naive",
]
