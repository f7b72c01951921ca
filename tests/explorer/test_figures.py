"""Token highlighting and charts render without a UI framework, and user text cannot become markup."""

from __future__ import annotations

from g2interp.dashboards.figures import (
    density_figure,
    effects_figure,
    error_figure,
    eval_figure,
    histogram_figure,
    latent_bars_figure,
    scores_figure,
    tokens_html,
)


def test_tokens_are_escaped_and_shaded():
    html = tokens_html(["<script>", "**bold**", " $x$", "\n", ""], [1.0, 0.5, 0.0, -1.0, 0.2], bold=0)
    assert "<script>" not in html and "&#60;script&#62;" in html
    assert "**" not in html and "$" not in html
    assert html.count("<span") == 5 and "font-weight:700" in html
    assert "rgba(255,140,0,1.000)" in html and "rgba(255,140,0,0.500)" in html
    assert "rgba(30,120,255,1.000)" in html  # negative values in blue
    assert "↵<br>" in html and "&#8709;" in html  # newline shown, empty token visible


def test_figures_build():
    assert len(histogram_figure([0.1, 1.0, 10.0], [3, 4]).data) == 1
    assert len(histogram_figure([], []).data) == 0
    assert len(density_figure([0.0, 0.1, 0.01]).data[0].x) == 2
    fig = effects_figure([("a", 2.0), ("a", 1.0)], [("b", -1.0)])
    assert len(set(fig.data[0].y)) == 3  # equal token texts keep their own bars
    assert list(latent_bars_figure([4, 2], [1.0, -0.5], "t", "x").data[0].y) == ["#2", "#4"]
    scores = scores_figure({"a": 0.7, "b": 0.2}, {"a": 0.5, "b": 0.5})
    assert scores.data[0].marker.color == ("rgb(220,50,50)", "rgb(60,160,90)")
    assert len(error_figure(["<bos>", "x"], [0.0, 0.5], [0, 3]).data) == 2
    rows = [{"layer": 1, "site": "resid_post", "L0": 5.0}, {"layer": 2, "site": "resid_post", "L0": None}]
    assert list(eval_figure(rows, "L0", "L0").data[0].x) == [1]
