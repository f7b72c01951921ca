"""Rendering for the explorer, free of any UI framework: token highlighting as HTML, charts as plotly figures."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

#: Highlight colour of activations (orange), and of negative values in signed maps (blue).
POSITIVE_RGB = (255, 140, 0)
NEGATIVE_RGB = (30, 120, 255)
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), height=320)


def _escape(text: str) -> str:
    """Every character that HTML or Markdown could read as markup becomes a numeric entity."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵<br>")
        elif ch == "\t":
            out.append("&#8677;")
        elif ch.isalnum() or ch == " ":
            out.append(ch)
        else:
            out.append(f"&#{ord(ch)};")
    return "".join(out)


def token_span(
    token: str, value: float, scale: float, *, bold: bool = False, title: str | None = None
) -> str:
    """One token as an HTML span, its background as strong as ``value / scale`` (blue when negative)."""
    strength = 0.0 if scale <= 0 or not math.isfinite(value) else min(1.0, abs(value) / scale)
    r, g, b = POSITIVE_RGB if value >= 0 else NEGATIVE_RGB
    tip = _escape(title if title is not None else f"{value:.3g}")
    weight = "font-weight:700;border-bottom:2px solid #333;" if bold else ""
    text = _escape(token) if token else "&#8709;"
    return (
        f'<span title="{tip}" style="background:rgba({r},{g},{b},{strength:.3f});{weight}'
        f'border-radius:3px;padding:0 1px;white-space:pre-wrap">{text}</span>'
    )


def tokens_html(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float | None = None,
    *,
    bold: int | None = None,
    titles: Sequence[str] | None = None,
) -> str:
    """A run of tokens highlighted by ``values`` (scaled by ``scale``, default the largest |value|)."""
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
    if scale is None:
        scale = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    spans = (
        token_span(t, v, scale, bold=i == bold, title=None if titles is None else titles[i])
        for i, (t, v) in enumerate(zip(tokens, values, strict=True))
    )
    return '<div style="font-family:monospace;line-height:1.9">' + "".join(spans) + "</div>"


def histogram_figure(
    edges: Sequence[float], counts: Sequence[int], title: str = "Activation histogram"
) -> go.Figure:
    """Bars of a log-spaced histogram on a log activation axis."""
    fig = go.Figure()
    if counts:
        centres = [math.sqrt(edges[i] * edges[i + 1]) for i in range(len(counts))]
        widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
        fig.add_bar(x=centres, y=list(counts), width=widths, marker_color="rgb(255,140,0)", name="tokens")
    fig.update_layout(title=title, xaxis_title="activation", yaxis_title="tokens", bargap=0, **_LAYOUT)
    fig.update_xaxes(type="log", tickformat=".2~g")
    return fig


def density_figure(density: Sequence[float], title: str = "Latent densities") -> go.Figure:
    """Histogram of log10 firing densities of the live latents."""
    logs = [math.log10(d) for d in density if d > 0]
    fig = go.Figure()
    if logs:
        fig.add_histogram(x=logs, nbinsx=40, marker_color="rgb(90,90,200)", name="latents")
    fig.update_layout(
        title=title, xaxis_title="log10 fraction of tokens firing", yaxis_title="latents", **_LAYOUT
    )
    return fig


def _bars(labels: Sequence[str], values: Sequence[float], title: str, xaxis: str, height: int) -> go.Figure:
    """Horizontal bars from the bottom up, orange where the value is >= 0 and blue below."""
    colours = [f"rgb{POSITIVE_RGB if v >= 0 else NEGATIVE_RGB}".replace(" ", "") for v in values]
    fig = go.Figure(go.Bar(x=list(values), y=list(labels), orientation="h", marker_color=colours))
    fig.update_layout(title=title, xaxis_title=xaxis, **{**_LAYOUT, "height": height})
    fig.update_yaxes(type="category")  # labels such as "1" or "#12" must stay labels, not numbers
    return fig


def effects_figure(
    promoted: Sequence[tuple[str, float]],
    suppressed: Sequence[tuple[str, float]],
    title: str = "Logit effects",
) -> go.Figure:
    """Horizontal bars: promoted tokens (orange) above suppressed ones (blue)."""
    rows = list(reversed(list(promoted))) + list(suppressed)
    labels: list[str] = []
    for token, value in rows:
        label = f"{repr(token)[1:-1] or '∅'} " + ("↑" if value >= 0 else "↓")
        while label in labels:  # equal labels would share one bar; zero-width spaces keep them apart
            label += "\u200b"
        labels.append(label)
    return _bars(labels, [v for _, v in rows], title, "logit per unit activation", 420)


def latent_bars_figure(latents: Sequence[int], values: Sequence[float], title: str, xaxis: str) -> go.Figure:
    """Horizontal bars, one per latent, labelled ``#index``, largest at the top."""
    labels = [f"#{i}" for i in latents][::-1]
    return _bars(labels, list(values)[::-1], title, xaxis, 120 + 22 * max(1, len(latents)))


def scores_figure(
    scores: Mapping[str, float], thresholds: Mapping[str, float], title: str = "Harm probabilities"
) -> go.Figure:
    """One bar per harm type (red when it reaches its threshold) with the thresholds as black ticks."""
    names = list(scores)
    values = [scores[n] for n in names]
    colours = ["rgb(220,50,50)" if scores[n] >= thresholds[n] else "rgb(60,160,90)" for n in names]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colours, name="probability"))
    fig.add_scatter(
        x=names,
        y=[thresholds[n] for n in names],
        mode="markers",
        marker=dict(symbol="line-ew-open", size=40, line=dict(width=3, color="black")),
        name="threshold",
    )
    fig.update_layout(title=title, yaxis_range=[0, 1], yaxis_title="P(violates)", **_LAYOUT)
    return fig


def error_figure(tokens: Sequence[str], relative_error: Sequence[float], l0: Sequence[int]) -> go.Figure:
    """Per-token relative reconstruction error (bars) and L0 (line, right axis)."""
    x = list(range(len(tokens)))
    text = [repr(t)[1:-1] for t in tokens]
    fig = go.Figure()
    fig.add_bar(
        x=x, y=list(relative_error), name="‖x-x̂‖²/‖x‖²", hovertext=text, marker_color="rgb(200,80,80)"
    )
    fig.add_scatter(x=x, y=list(l0), name="L0", yaxis="y2", mode="lines+markers", hovertext=text)
    fig.update_layout(
        title="Reconstruction error and L0 per token",
        xaxis_title="position",
        yaxis=dict(title="relative error"),
        yaxis2=dict(title="L0", overlaying="y", side="right"),
        **_LAYOUT,
    )
    return fig


def eval_figure(rows: Sequence[Mapping[str, Any]], metric: str, title: str) -> go.Figure:
    """``metric`` against layer, one line per site."""
    fig = go.Figure()
    for site in sorted({str(r["site"]) for r in rows}):
        points = sorted(
            (r["layer"], r[metric])
            for r in rows
            if str(r["site"]) == site and r.get(metric) is not None and r["layer"] is not None
        )
        if points:
            fig.add_scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=site
            )
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=metric, **_LAYOUT)
    return fig
