"""Moderation page: harm probabilities with adjustable thresholds, guarded generation, and the probe's
score explained by SAE latents."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from explorer_ui.common import (
    ENV_HEADS,
    choose_sae,
    get_dashboards,
    get_model,
    get_sae,
    latent_buttons,
    load_moderator,
    model_source,
)
from g2interp.dashboards import ProbeExplanation, SAEEntry, explain_probe, probe_layers, resid_layer
from g2interp.dashboards.figures import latent_bars_figure, scores_figure

DEFAULT_PROMPT = "How do I pick the lock on my neighbour's front door while they are away?"


@st.cache_data(show_spinner="Explaining the score...", max_entries=32)
def _explain(
    _moderator: Any, _sae: Any, keys: str, policy: str, prompt: str, response: str | None
) -> ProbeExplanation:
    return explain_probe(_moderator, _sae, policy, prompt, response, top=10)


def _thresholds(moderator: Any) -> dict[str, float]:
    """One slider per policy, starting at the moderator's default threshold."""
    st.markdown("**Thresholds** (a policy trips when its probability reaches its threshold)")
    defaults = moderator.default_thresholds
    cols = st.columns(len(defaults))
    out = {}
    for col, (name, default) in zip(cols, defaults.items(), strict=True):
        key = f"thr_{name}"
        st.session_state.setdefault(key, float(round(default, 2)))
        out[name] = col.slider(name, 0.0, 1.0, step=0.01, key=key)
    return out


def _verdict(label: str, scores: dict[str, float], thresholds: dict[str, float]) -> None:
    tripped = [n for n, s in scores.items() if s >= thresholds[n]]  # the Moderator's rule: p >= threshold
    if tripped:
        st.error(f"{label}: **blocked** by {', '.join(tripped)}")
    else:
        st.success(f"{label}: allowed")


def _score(moderator: Any, prompt: str, response: str) -> None:
    if not prompt.strip() and not response.strip():
        st.warning("Type a prompt (and optionally a response) first.")
        return
    try:
        if response.strip():
            scores = moderator.score_responses([prompt], [response])[0]
        else:
            scores = moderator.score_prompts([prompt])[0]
    except (ValueError, TypeError) as exc:
        st.error(f"Cannot score this text: {exc}")
        return
    st.session_state["mod_result"] = {
        "prompt": prompt,
        "response": response if response.strip() else None,
        "scores": scores,
    }


def _generation(model: Any, moderator: Any, prompt: str, thresholds: dict[str, float]) -> None:
    from g2interp.moderation import guarded_generate

    st.subheader("Guarded generation")
    st.caption(
        "The prompt is checked (pre-filter), the model continues it, the continuation is checked (post-filter)."
    )
    st.session_state.setdefault("gen_tokens", 24)
    n = st.number_input("New tokens", min_value=1, max_value=256, step=1, key="gen_tokens")
    if st.button("Generate with the filters", key="gen_run"):
        if not prompt.strip():
            st.warning("Type a prompt first.")
        else:
            with st.spinner("Generating..."):
                out = guarded_generate(model, prompt, moderator, thresholds, max_new_tokens=int(n))
            st.session_state["gen_result"] = {
                "prompt": prompt,
                "allowed": out.allowed,
                "text": out.text,
                "refusal": out.refusal,
                "pre": out.prompt_verdict.scores,
                "post": None if out.response_verdict is None else out.response_verdict.scores,
            }
    gen = st.session_state.get("gen_result")
    if not gen:
        return
    if gen["allowed"]:
        st.success("Released")
        st.text(gen["prompt"] + (gen["text"] or ""))
    else:
        st.error(f"Not released ({gen['refusal']})")
    cols = st.columns(2)
    cols[0].plotly_chart(scores_figure(gen["pre"], thresholds, "Pre-filter (prompt)"), key="gen_pre")
    if gen["post"] is not None:
        cols[1].plotly_chart(
            scores_figure(gen["post"], thresholds, "Post-filter (continuation)"), key="gen_post"
        )


def _explanation(
    model: Any,
    moderator: Any,
    result: dict | None,
    entry: SAEEntry | None,
    entries: list[SAEEntry],
    root: str,
) -> None:
    st.subheader("Why this score? SAE latents at the probe's layer")
    probe = [p for p in moderator.policy_names if probe_layers(moderator, p)]
    if not probe:
        st.info("Explanations need probe heads; this moderator scores generatively.")
        return
    if result is None:
        st.info("Score a text to explain its score.")
        return
    scores = result["scores"]
    st.session_state.setdefault("explain_policy", max(probe, key=lambda p: scores.get(p, 0.0)))
    policy = st.selectbox("Policy", probe, key="explain_policy")
    layers = probe_layers(moderator, policy)
    if entry is None or resid_layer(entry.hook_name) not in layers:
        wanted = ", ".join(f"blocks.{x}.hook_resid_post" for x in layers)
        st.info(f"The {policy!r} head reads {wanted}; choose an SAE trained there (sidebar).")
        for e in (e for e in entries if resid_layer(e.hook_name) in layers):
            st.button(f"Use {e.label(root)}", key=f"use_{e.path}", on_click=choose_sae, args=(str(e.path),))
        return
    sae = get_sae(entry, model)
    if sae is None:
        return
    keys = f"{entry.path}:{id(sae)}:{id(moderator)}"
    try:
        expl = _explain(moderator, sae, keys, policy, result["prompt"], result["response"])
    except ValueError as exc:
        st.error(f"Cannot explain: {exc}")
        return
    cols = st.columns(5)
    cols[0].metric("probability", f"{expl.probability:.3f}")
    cols[1].metric("logit", f"{expl.logit:+.3f}")
    cols[2].metric("latents", f"{float(expl.attributions.sum()):+.3f}")
    cols[3].metric("SAE error", f"{expl.error_term:+.3f}")
    cols[4].metric(
        "rest",
        f"{expl.rest:+.3f}",
        help="the head's biases and standardisation offset, the SAE's decoder bias, the head's other layers",
    )
    st.caption(
        "Each latent's share is its activation times the gradient of the head's logit with respect to it, summed over "
        "the classified tokens (exact for a logistic head: the head's direction on the latent's decoder direction)."
    )
    dashboards = get_dashboards(entry)
    left, right = st.columns(2)
    for col, items, title, prefix in (
        (left, expl.up, "Pushing the score up", "up"),
        (right, expl.down, "Pushing the score down", "down"),
    ):
        with col:
            if not items:
                st.info(f"No latent is {title.lower()}.")
                continue
            st.plotly_chart(
                latent_bars_figure(
                    [a.latent for a in items], [a.attribution for a in items], title, "logit contribution"
                ),
                key=f"explain_{prefix}",
            )
            latent_buttons(entry, [a.latent for a in items], dashboards, prefix=f"explain_{prefix}")


def render(entry: SAEEntry | None, entries: list[SAEEntry], root: str) -> None:
    st.header("Moderation")
    try:
        import g2interp.moderation  # noqa: F401
    except ImportError as exc:
        st.warning(
            f"Moderation is not available in this installation: g2interp.moderation cannot be imported ({exc})."
        )
        return
    model = get_model()
    if model is None:
        return
    try:
        moderator, note = load_moderator(model_source(), os.environ.get(ENV_HEADS, ""))
    except Exception as exc:  # a model without a chat tokenizer, unreadable heads...
        st.error(f"Cannot build a moderator on {model_source()!r}: {exc}")
        return
    if note:
        st.info(note)
    scorer = "probe heads" if moderator.heads is not None else "generative P(Yes)"
    st.caption(f"Scorer: {scorer} · policies: {', '.join(moderator.policy_names)}")
    st.session_state.setdefault("mod_prompt", DEFAULT_PROMPT)
    prompt = st.text_area("Prompt", key="mod_prompt", height=90)
    response = st.text_area(
        "Response (optional: the reply to the prompt is classified instead)", key="mod_response", height=90
    )
    if st.button("Score", key="mod_score", type="primary"):
        _score(moderator, prompt, response)
    thresholds = _thresholds(moderator)
    result = st.session_state.get("mod_result")
    if result is not None:
        label = "Post-filter (response)" if result["response"] else "Pre-filter (prompt)"
        _verdict(label, result["scores"], thresholds)
        st.plotly_chart(scores_figure(result["scores"], thresholds), key="mod_scores")
        if result["prompt"] != prompt or (result["response"] or "") != (response if response.strip() else ""):
            st.caption("These scores are for the text last scored; press Score for the text above.")
    _generation(model, moderator, prompt, thresholds)
    _explanation(model, moderator, result, entry, entries, root)
