"""Steering panel of the Features page: a prompt's greedy continuation with and without one latent steered.

The library does the work (``model.generate(prompt, steer=[Steering(sae, latent, value, mode)])``); this
module only reads the inputs, checks them with messages naming the valid values, and shows both texts.
"""

from __future__ import annotations

import html
import math
from typing import Any

import streamlit as st

from explorer_ui.common import get_model, get_sae, model_source
from g2interp.dashboards import SAEEntry

DEFAULT_PROMPT = "The weather today is"
DEFAULT_VALUE = 10.0
DEFAULT_NEW_TOKENS = 24
MAX_NEW_TOKENS = 256
MODES = ("clamp", "add", "scale")
MODE_HELP = {
    "clamp": "set the latent's activation to the value at every position (0 ablates it)",
    "add": "add the value to the latent's activation at every position",
    "scale": "multiply the latent's activation by the value at every position",
}


@st.cache_data(show_spinner="Generating without steering...", max_entries=32)
def _plain(_model: Any, model_key: str, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """The greedy continuation of ``prompt`` (text, ids, whether it stopped at EOS)."""
    return _summary(_model.generate(prompt, max_new_tokens=max_new_tokens))


@st.cache_data(show_spinner="Generating with the latent steered...", max_entries=32)
def _steered(
    _model: Any,
    _sae: Any,
    model_key: str,
    sae_key: str,
    prompt: str,
    max_new_tokens: int,
    latent: int,
    value: float,
    mode: str,
) -> dict[str, Any]:
    """The greedy continuation of ``prompt`` with ``latent`` of the SAE steered (``mode``, ``value``)."""
    from g2interp.sae import Steering

    steer = [Steering(_sae, latent, value, mode=mode)]
    return _summary(_model.generate(prompt, max_new_tokens=max_new_tokens, steer=steer))


def _summary(out: Any) -> dict[str, Any]:
    return {"text": out.texts[0], "ids": list(out.new_tokens[0]), "finished": bool(out.finished[0])}


def describe(latent: int, value: float, mode: str) -> str:
    """``latent #5 clamped to 10``-style words for a steering."""
    verb = {"clamp": "clamped to", "add": "plus", "scale": "times"}[mode]
    return f"latent #{latent} {verb} {value:g}"


def check_inputs(prompt: str, latent: int, value: float, d_sae: int) -> str | None:
    """Why the inputs cannot be run (a message naming the valid values), or None when they can."""
    if not prompt.strip():
        return "The prompt is empty: type the text to continue."
    if not 0 <= latent < d_sae:
        return (
            f"Latent {latent} is out of range: this SAE has {d_sae} latents, "
            f"valid latents are 0 to {d_sae - 1}."
        )
    if not math.isfinite(value):
        return f"The value must be a finite number, got {value}."
    return None


def _follow_page(shown: int | None) -> None:
    """Point the latent box at the latent the page shows whenever that changes (it may then be edited)."""
    if shown is not None and st.session_state.get("_steer_shown") != shown:
        st.session_state["_steer_shown"] = shown
        st.session_state["steer_latent"] = shown
    st.session_state.setdefault("steer_latent", 0 if shown is None else shown)


def _run(entry: SAEEntry, inputs: dict[str, Any]) -> None:
    """Generate both continuations and keep them (with their inputs) in the session."""
    model = get_model()
    if model is None:
        return
    sae = get_sae(entry, model)
    if sae is None:
        return
    problem = check_inputs(inputs["prompt"], inputs["latent"], inputs["value"], sae.cfg.d_sae)
    if problem:
        st.error(problem)
        return
    model_key, sae_key = f"{model_source()}:{id(model)}", f"{entry.path}:{id(sae)}"
    try:
        plain = _plain(model, model_key, inputs["prompt"], inputs["max_new_tokens"])
        steered = _steered(model, sae, model_key, sae_key, **inputs)
    except (ValueError, TypeError, RuntimeError) as exc:  # a prompt too long, a model without tokenizer...
        st.error(f"Cannot generate with {describe(inputs['latent'], inputs['value'], inputs['mode'])}: {exc}")
        return
    st.session_state["steer_result"] = {**inputs, "sae": str(entry.path), "plain": plain, "steered": steered}


def continuation_html(prompt: str, text: str) -> str:
    """The prompt (grey) and its continuation in a ``<pre>``, so that every character shows as generated
    (``st.text`` would strip and dedent it)."""
    return (
        f'<pre style="white-space:pre-wrap;margin:0"><i style="color:#888;font-style:normal">'
        f"{html.escape(prompt)}</i>{html.escape(text)}</pre>"
    )


def _continuation(title: str, prompt: str, result: dict[str, Any]) -> None:
    st.markdown(f"**{title}**")
    st.markdown(continuation_html(prompt, result["text"]), unsafe_allow_html=True)
    n = len(result["ids"])
    notes = [f"{n} new token{'s' * (n != 1)}"]
    if result["finished"]:
        notes.append("stopped at end of text")
    if not result["text"]:
        notes.append("the continuation is empty")
    st.caption(" · ".join(notes))


def show_result(result: dict[str, Any]) -> None:
    """The two continuations side by side, each after its prompt."""
    left, right = st.columns(2)
    with left:
        _continuation("Without steering", result["prompt"], result["plain"])
    with right:
        title = f"With {describe(result['latent'], result['value'], result['mode'])}"
        _continuation(title, result["prompt"], result["steered"])
    if result["plain"]["ids"] == result["steered"]["ids"]:
        st.info("Steering left the greedy continuation unchanged: try a larger value or another mode.")


def render(entry: SAEEntry, shown: int | None, max_activation: float | None = None) -> None:
    """The panel for ``entry``; ``shown`` is the latent the page shows (the default latent to steer)."""
    st.markdown("#### Steering")  # not a subheader: the page has one, the latent's
    st.caption(
        "Greedy continuations of a prompt, as the model writes it and with one latent of this SAE set at "
        f"every position (at `{entry.hook_name}`; only that latent's share of the activation changes)."
    )
    _follow_page(shown)
    st.session_state.setdefault("steer_prompt", DEFAULT_PROMPT)
    st.session_state.setdefault("steer_mode", MODES[0])
    st.session_state.setdefault("steer_value", DEFAULT_VALUE)
    st.session_state.setdefault("steer_tokens", DEFAULT_NEW_TOKENS)
    prompt = st.text_area("Prompt to continue", key="steer_prompt", height=80)
    cols = st.columns(4)
    latent = cols[0].number_input(
        "Latent to steer", step=1, key="steer_latent", help=f"0 to {entry.d_sae - 1} (this SAE's latents)"
    )
    mode = cols[1].selectbox(
        "Mode", MODES, key="steer_mode", help="; ".join(f"{m}: {h}" for m, h in MODE_HELP.items())
    )
    value = cols[2].number_input("Value", step=1.0, key="steer_value", help=MODE_HELP[mode])
    n_new = cols[3].number_input(
        "New tokens", min_value=1, max_value=MAX_NEW_TOKENS, step=1, key="steer_tokens"
    )
    if max_activation is not None and int(latent) == shown:
        st.caption(f"Latent #{shown} reached {max_activation:.3g} at most on the dashboards' tokens.")
    inputs = {
        "prompt": prompt,
        "max_new_tokens": int(n_new),
        "latent": int(latent),
        "value": float(value),
        "mode": mode,
    }
    problem = check_inputs(prompt, inputs["latent"], inputs["value"], entry.d_sae)
    if problem:
        st.error(problem)
    if st.button("Generate both", key="steer_run", type="primary", disabled=bool(problem)):
        _run(entry, inputs)
    result = st.session_state.get("steer_result")
    if not result or result["sae"] != str(entry.path):
        return
    show_result(result)
    if any(result[k] != inputs[k] for k in inputs):
        st.caption("These continuations are for the inputs last run; press Generate both for the ones above.")
