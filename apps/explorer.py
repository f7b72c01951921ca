"""The g2interp explorer: SAE latent dashboards, latents on typed text, moderation scores and SAE evaluations.

    streamlit run apps/explorer.py          # binds to localhost (.streamlit/config.toml)

A thin UI over the public API (``g2interp.dashboards``, ``g2interp.moderation``). Settings from the
environment: ``G2INTERP_EXPLORER_RUNS`` (runs folder searched for SAEs, default ``runs``),
``G2INTERP_EXPLORER_MODEL`` (model source, default the embedded Gemma 3 270M) and
``G2INTERP_EXPLORER_HEADS`` (probe-head folder, default the shipped heads); the sidebar can change the
first two. Pages can be opened by URL: ``?page=Features&sae=PATH&latent=12``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the explorer_ui package beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamlit as st
from explorer_ui import common, evaluations, features, moderation, text


def main() -> None:
    st.set_page_config(page_title="g2interp explorer", layout="wide")
    common.read_query_params()
    root, entries, entry = common.sidebar()
    page = st.session_state["page"]
    if page == "Features":
        features.render(entry)
    elif page == "Text":
        text.render(entry)
    elif page == "Moderation":
        moderation.render(entry, entries, root)
    else:
        evaluations.render(entries, root)


main()
