"""Latent dashboards and the analyses behind the explorer (``apps/explorer.py``); no UI framework here.

``build_dashboards(model, sae, contexts, out_folder)`` precomputes, per latent, top-activating contexts,
an activation histogram, the firing density and logit effects, stored beside the SAE
(``SAE_FOLDER/dashboards/``); ``Dashboards.load(folder).latent(i)`` reads one latent back.
``analyze_text`` and ``explain_probe`` are the live analyses; ``find_saes`` lists a runs folder.
Charts and token highlighting live in :mod:`g2interp.dashboards.figures` (imports plotly).
"""

from g2interp.dashboards.analysis import (
    LatentAttribution,
    ProbeExplanation,
    TextAnalysis,
    analyze_text,
    explain_probe,
    probe_layers,
    resid_layer,
)
from g2interp.dashboards.build import (
    BuildResult,
    DashboardConfig,
    LogitEffects,
    build_dashboards,
    dashboards_current,
    default_folder,
    logit_effects,
    sae_fingerprint,
)
from g2interp.dashboards.runs import SAEEntry, eval_rows, find_saes, parse_hook, read_entry
from g2interp.dashboards.store import (
    Dashboards,
    DashboardsNotFoundError,
    LatentContext,
    LatentDashboard,
    TokenEffect,
)

__all__ = [
    "BuildResult",
    "DashboardConfig",
    "Dashboards",
    "DashboardsNotFoundError",
    "LatentAttribution",
    "LatentContext",
    "LatentDashboard",
    "LogitEffects",
    "ProbeExplanation",
    "SAEEntry",
    "TextAnalysis",
    "TokenEffect",
    "analyze_text",
    "build_dashboards",
    "dashboards_current",
    "default_folder",
    "eval_rows",
    "explain_probe",
    "find_saes",
    "logit_effects",
    "parse_hook",
    "probe_layers",
    "read_entry",
    "resid_layer",
    "sae_fingerprint",
]
