"""Evaluations page: L0, FVU, Δ loss and dead latents of every evaluated SAE, per layer and site."""

from __future__ import annotations

import streamlit as st

from g2interp.dashboards import SAEEntry, eval_rows
from g2interp.dashboards.figures import eval_figure

CHARTS = (
    ("L0", "L0: active latents per token"),
    ("FVU", "Fraction of variance unexplained"),
    ("delta_loss", "Δ next-token loss with the SAE spliced in (nats)"),
    ("dead_pct", "Dead latents (%)"),
)


def render(entries: list[SAEEntry], root: str) -> None:
    st.header("SAE evaluations")
    rows = eval_rows(entries, root)
    if not rows:
        st.info(
            f"No evaluated SAE under {root!r}: `eval.json` / `delta_lm_loss.json` are written beside an SAE by "
            "`g2interp train-sae` and `experiments/train_saes.py`."
        )
        return
    st.caption(f"{len(rows)} evaluated SAE(s) under {root!r}, from the JSON files beside each SAE.")
    for first, second in zip(CHARTS[::2], CHARTS[1::2], strict=True):
        cols = st.columns(2)
        for col, (metric, title) in zip(cols, (first, second), strict=True):
            col.plotly_chart(eval_figure(rows, metric, title), key=f"eval_{metric}")
    st.dataframe(rows, hide_index=True, key="eval_table")
