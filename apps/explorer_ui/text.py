"""Text page: an SAE's latents on every token of a typed text, and its reconstruction error there."""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from explorer_ui.common import get_dashboards, get_model, get_sae, latent_buttons, model_source
from g2interp.dashboards import SAEEntry, TextAnalysis, analyze_text
from g2interp.dashboards.figures import error_figure, latent_bars_figure, tokens_html

DEFAULT_TEXT = "The Eiffel Tower is in Paris. def add(a, b):\n    return a + b"
MAX_TOKENS = 256


@st.cache_data(show_spinner="Running the model and the SAE...", max_entries=8)
def _analyze(_model: Any, _sae: Any, model_key: str, sae_key: str, text: str) -> TextAnalysis:
    return analyze_text(_model, _sae, text, k=10, max_tokens=MAX_TOKENS)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def render(entry: SAEEntry | None) -> None:
    st.header("Text")
    if entry is None:
        st.info("Choose a runs folder that holds an SAE (sidebar).")
        return
    st.session_state.setdefault("text_input", DEFAULT_TEXT)
    text = st.text_area("Text", key="text_input", height=120)
    if not text.strip():
        st.info("Type some text to see the SAE's latents on each of its tokens.")
        return
    model = get_model()
    if model is None:
        return
    sae = get_sae(entry, model)
    if sae is None:
        return
    try:
        result = _analyze(model, sae, f"{model_source()}:{id(model)}", f"{entry.path}:{id(sae)}", text)
    except (ValueError, KeyError) as exc:
        st.error(f"Cannot analyse this text with {entry.hook_name}: {exc}")
        return
    dashboards = get_dashboards(entry)

    cols = st.columns(5)
    cols[0].metric("tokens", len(result.tokens))
    cols[1].metric("‖x−x̂‖² / ‖x‖²", _fmt(result.total_relative_error))
    cols[2].metric("FVU", _fmt(result.fvu))
    cols[3].metric("CE clean", _fmt(result.ce_clean))
    delta = None if result.ce_sae is None or result.ce_clean is None else result.ce_sae - result.ce_clean
    cols[4].metric(
        "CE with SAE",
        _fmt(result.ce_sae),
        delta=None if delta is None else f"{delta:+.4f}",
        delta_color="inverse",
    )
    st.caption(
        "Reconstruction figures leave out BOS (SAEs are not trained on it); CE splices the SAE in after BOS."
    )

    totals = result.acts[1:].sum(0) if len(result.tokens) > 1 else result.acts.sum(0)
    ranked = [int(i) for i in totals.argsort(descending=True)[:20] if totals[i] > 0]
    if ranked:
        latent = st.selectbox(
            "Highlight the tokens by a latent (the text's strongest latents)",
            ranked,
            key="text_latent",
            format_func=lambda i: f"#{i}  (total {float(totals[i]):.3g})",
        )
        values = result.acts[:, latent].tolist()
        titles = [f"{v:.3g}" for v in values]
        values[0], titles[0] = 0.0, f"BOS (left out; {values[0]:.3g})"  # BOS activations dwarf the rest
        st.markdown(tokens_html(result.tokens, values, titles=titles), unsafe_allow_html=True)
    else:
        st.info("No latent fires on this text.")

    rows = [
        {
            "pos": q,
            "token": result.tokens[q],
            "L0": int(result.l0[q]),
            "rel. error": float(result.relative_error[q]),
            "top latents": ", ".join(
                f"#{int(f)} ({float(v):.3g})"
                for f, v in zip(result.top_latents[q][:5], result.top_values[q][:5], strict=True)
                if v > 0
            ),
        }
        for q in range(len(result.tokens))
    ]
    st.dataframe(rows, hide_index=True, key="text_table")

    positions = list(range(len(result.tokens)))
    st.session_state.setdefault("text_token", min(1, len(positions) - 1))
    if st.session_state["text_token"] not in positions:
        st.session_state["text_token"] = positions[-1]
    q = st.selectbox("Token", positions, key="text_token", format_func=lambda i: f"{i}: {result.tokens[i]!r}")
    top = [
        (int(f), float(v)) for f, v in zip(result.top_latents[q], result.top_values[q], strict=True) if v > 0
    ]
    if top:
        left, right = st.columns(2)
        left.plotly_chart(
            latent_bars_figure(
                [f for f, _ in top], [v for _, v in top], f"Latents on token {q}", "activation"
            ),
            key="text_token_latents",
        )
        with right:
            st.markdown("**Open a latent's dashboard**")
            latent_buttons(entry, [f for f, _ in top], dashboards, prefix="text")
    else:
        st.info(f"No latent fires on token {q} ({result.tokens[q]!r}).")
    st.plotly_chart(
        error_figure(result.tokens, result.relative_error.tolist(), result.l0.tolist()), key="text_error"
    )
