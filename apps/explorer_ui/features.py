"""Features page: browse an SAE's latents, read one latent's dashboard, and steer it in a continuation."""

from __future__ import annotations

import streamlit as st

from explorer_ui import steering
from explorer_ui.common import build_hint, get_dashboards, latent_url
from g2interp.dashboards import Dashboards, LatentDashboard, SAEEntry
from g2interp.dashboards.figures import density_figure, effects_figure, histogram_figure, tokens_html

ORDERS = ("density (high to low)", "density (low to high)", "max activation", "index", "dead only")
LIST_LENGTH = 50


def _ordered(dash: Dashboards, order: str, query: str) -> list[int]:
    if query.strip():
        return dash.search(query, limit=LIST_LENGTH)
    if order == "dead only":
        return [int(i) for i in dash.dead[:LIST_LENGTH]]
    if order == "index":
        return list(range(min(LIST_LENGTH, dash.d_sae)))
    if order == "max activation":
        return [int(i) for i in dash.order("max_activation")[:LIST_LENGTH]]
    descending = order == "density (high to low)"
    return [int(i) for i in dash.order("density", descending=descending)[:LIST_LENGTH]]


def _pick_from_list() -> None:
    picked = st.session_state.get("feat_pick")
    if picked is not None:
        st.session_state["latent"] = int(picked)


def browse(dash: Dashboards) -> None:
    """Overview of all latents, a sorted / searched list, and a way to open one."""
    n_dead = len(dash.dead)
    cols = st.columns(3)
    cols[0].metric("latents", f"{dash.d_sae:,}")
    cols[1].metric("dead", f"{n_dead:,} ({100 * n_dead / dash.d_sae:.1f}%)")
    cols[2].metric("tokens seen", f"{dash.n_tokens:,}")
    st.caption(f"`{dash.hook_name}` · built from {dash.manifest.get('source') or 'an unnamed corpus'}")
    with st.expander("All latents: densities, sorted list, search", expanded=False):
        st.plotly_chart(density_figure(dash.density.tolist()), key="feat_density")
        left, right = st.columns(2)
        order = left.selectbox("Sort by", ORDERS, key="feat_order")
        query = right.text_input("Search tokens (or #index)", key="feat_search")
        latents = _ordered(dash, order, query)
        if not latents:
            st.info("No latent matches." if query.strip() else "No latent in this list.")
            return
        rows = [
            {
                "latent": i,
                "density": float(dash.density[i]),
                "max act": float(dash.stats["max_activation"][i]),
                "fires most on": dash.top_token(i),
                "promotes": dash.top_promoted(i),
                "dead": bool(dash.stats["n_fired"][i] == 0),
            }
            for i in latents
        ]
        st.dataframe(rows, hide_index=True, key="feat_table")
        st.selectbox(
            "Open a latent from this list",
            latents,
            index=None,
            key="feat_pick",
            on_change=_pick_from_list,
            format_func=lambda i: f"#{i}  {dash.top_token(i)!r}",
        )


def show_latent(entry: SAEEntry, lat: LatentDashboard) -> None:
    """One latent: numbers, top contexts with highlighted tokens, histogram, logit effects."""
    st.subheader(f"Latent #{lat.index}")
    if lat.dead:
        st.warning("Dead latent: it fired on none of the tokens the dashboards were built from.")
    cols = st.columns(4)
    cols[0].metric("density", f"{lat.density:.3e}")
    cols[1].metric("tokens fired on", f"{lat.n_fired:,}")
    cols[2].metric("mean activation", f"{lat.mean_activation:.3g}")
    cols[3].metric("max activation", f"{lat.max_activation:.3g}")
    st.caption(f"[Link to this latent]({latent_url(entry, lat.index)})")
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Top-activating contexts** (the bold token holds the context's largest activation)")
        if not lat.contexts:
            st.info("No context: the latent never fired.")
        for c in lat.contexts:
            html = tokens_html(c.tokens, c.activations, lat.max_activation, bold=c.center)
            st.markdown(
                f'<div style="display:flex;gap:8px"><code>{c.max_activation:8.3g}</code>{html}</div>',
                unsafe_allow_html=True,
            )
    with right:
        st.plotly_chart(histogram_figure(lat.hist_edges, lat.hist_counts), key="feat_hist")
        if not lat.promoted and not lat.suppressed:
            st.info("No logit effects: this site's decoder directions do not map onto the residual stream.")
            return
        st.plotly_chart(
            effects_figure(
                [(e.token, e.effect) for e in lat.promoted], [(e.token, e.effect) for e in lat.suppressed]
            ),
            key="feat_effects",
        )


def render(entry: SAEEntry | None) -> None:
    st.header("Features")
    if entry is None:
        st.info("Choose a runs folder that holds an SAE (sidebar).")
        return
    dash = get_dashboards(entry)
    if dash is None:
        build_hint(entry)
        shown = st.session_state.get("latent")  # e.g. opened from another page; else none to follow
        steering.render(entry, int(shown) if shown is not None and 0 <= int(shown) < entry.d_sae else None)
        return
    browse(dash)
    densest = int(dash.order("density")[0])
    st.session_state.setdefault("latent", densest)
    if not 0 <= int(st.session_state["latent"]) < dash.d_sae:
        st.session_state["latent"] = densest
    index = st.number_input("Latent", min_value=0, max_value=dash.d_sae - 1, step=1, key="latent")
    lat = dash.latent(int(index))
    show_latent(entry, lat)
    st.divider()
    steering.render(entry, lat.index, None if lat.dead else lat.max_activation)
