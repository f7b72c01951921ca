"""Shared pieces of the explorer: settings from the environment, cached resources, the sidebar, navigation."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

import streamlit as st

from g2interp.constants import EMBEDDED_MODEL
from g2interp.dashboards import Dashboards, SAEEntry, find_saes
from g2interp.dashboards.constants import DASHBOARD_MANIFEST_FILE, DASHBOARDS_DIR

PAGES = ("Features", "Text", "Moderation", "Evaluations")
#: Environment variables the explorer reads (tests point them at tiny models and folders).
ENV_MODEL = "G2INTERP_EXPLORER_MODEL"
ENV_RUNS = "G2INTERP_EXPLORER_RUNS"
ENV_HEADS = "G2INTERP_EXPLORER_HEADS"


# ---------------------------------------------------------------------------------------------- resources
@st.cache_resource(show_spinner="Loading the model...")
def load_model(source: str):
    from g2interp.loading import load_model as load

    model = load(source)
    model.eval()
    return model


@st.cache_resource(show_spinner="Loading the SAE...", max_entries=8)
def load_sae(path: str, stamp: float, device: str):
    from g2interp.sae import JumpReLUSAE

    return JumpReLUSAE.load(path, device=device)


@st.cache_resource(show_spinner="Loading dashboards...", max_entries=8)
def load_dashboards(path: str, stamp: float) -> Dashboards:
    return Dashboards.load(path)


@st.cache_resource(show_spinner="Loading the moderator...")
def load_moderator(source: str, heads: str) -> tuple[Any, str]:
    """(moderator, note): probe heads when they load for this model, else the generative scorer."""
    from g2interp.moderation import Moderator

    model = load_model(source)
    try:
        moderator = Moderator(model, scorer="auto", heads=heads or None)
    except (FileNotFoundError, ValueError) as exc:
        return Moderator(
            model, scorer="generative"
        ), f"No probe heads ({exc}); scoring generatively with P(Yes)."
    if moderator.heads is None:
        return moderator, "The probe heads were trained on another model; scoring generatively with P(Yes)."
    return moderator, ""


@st.cache_data(ttl=10, show_spinner=False)
def list_saes(root: str) -> list[SAEEntry]:
    """The SAEs under ``root`` (re-scanned at most every 10 s: runs folders can hold large stores)."""
    return find_saes(root)


def _stamp(path: Path) -> float:
    """Modification time, so that a rebuilt artifact is read again rather than served from the cache."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def model_source() -> str:
    return st.session_state.get("model_source") or os.environ.get(ENV_MODEL) or EMBEDDED_MODEL


def get_model():
    """The model, or None after showing why it cannot be loaded."""
    source = model_source()
    try:
        return load_model(source)
    except Exception as exc:  # any loading failure becomes a message, not a traceback
        st.error(f"Cannot load the model {source!r}: {exc}")
        return None


def get_sae(entry: SAEEntry, model: Any):
    try:
        return load_sae(str(entry.path), _stamp(entry.path / "sae_weights.safetensors"), str(model.device))
    except Exception as exc:
        st.error(f"Cannot load the SAE in {entry.path}: {exc}")
        return None


def get_dashboards(entry: SAEEntry) -> Dashboards | None:
    """The entry's dashboards, or None (callers explain how to build them)."""
    manifest = entry.path / DASHBOARDS_DIR / DASHBOARD_MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        return load_dashboards(str(entry.path), _stamp(manifest))
    except Exception as exc:
        st.error(f"Cannot read the dashboards of {entry.path}: {exc}")
        return None


def build_hint(entry: SAEEntry) -> None:
    st.warning(f"No dashboards for this SAE yet ({entry.path / DASHBOARDS_DIR} is missing).")
    st.code(f"g2interp dashboards --sae {entry.path}", language="bash")
    st.caption("It reads the held-out contexts of the store the SAE was trained on (from its provenance).")


# ---------------------------------------------------------------------------------------------- navigation
def read_query_params() -> None:
    """Seed page, SAE and latent from the URL once per session (links like ``?page=Features&latent=12``)."""
    if st.session_state.get("_query_read"):
        return
    st.session_state["_query_read"] = True
    params = st.query_params
    if params.get("page") in PAGES:
        st.session_state["page"] = params["page"]
    if params.get("runs"):
        st.session_state["runs_root"] = params["runs"]
    if params.get("sae"):
        st.session_state["sae"] = params["sae"]
    latent = params.get("latent", "")
    if latent.isdigit():
        st.session_state["latent"] = int(latent)


def open_latent(index: int, sae_path: str | None = None) -> None:
    """Button callback: show ``index`` on the Features page (of ``sae_path`` when given)."""
    st.session_state["page"] = "Features"
    st.session_state["latent"] = int(index)
    if sae_path is not None:
        st.session_state["sae"] = sae_path


def choose_sae(sae_path: str) -> None:
    st.session_state["sae"] = sae_path


def latent_url(entry: SAEEntry, index: int) -> str:
    """A link opening latent ``index`` of ``entry`` on the Features page in a new session."""
    query = {"page": "Features", "sae": str(entry.path), "latent": str(index)}
    root = st.session_state.get("runs_root")
    if root:
        query["runs"] = root
    return "?" + urllib.parse.urlencode(query)


def latent_buttons(entry: SAEEntry, latents: list[int], dashboards: Dashboards | None, prefix: str) -> None:
    """One row per latent: a button opening its dashboard, a link to it, and what it is about."""
    for index in latents:
        cols = st.columns([1, 1, 4], vertical_alignment="center")
        cols[0].button(
            f"#{index}", key=f"{prefix}_open_{index}", on_click=open_latent, args=(index, str(entry.path))
        )
        cols[1].markdown(f"[link]({latent_url(entry, index)})")
        if dashboards is not None and index < dashboards.d_sae:
            density = float(dashboards.density[index])
            info = (
                "dead"
                if density == 0
                else (
                    f"density {density:.2e} · fires most on {dashboards.top_token(index)!r} · "
                    f"promotes {dashboards.top_promoted(index)!r}"
                )
            )
            cols[2].caption(info)


# ---------------------------------------------------------------------------------------------- sidebar
def sidebar() -> tuple[str, list[SAEEntry], SAEEntry | None]:
    """Page, runs folder, SAE choice and model source; returns (runs root, SAEs found, chosen SAE)."""
    bar = st.sidebar
    bar.title("g2interp explorer")
    st.session_state.setdefault("page", PAGES[0])
    bar.radio("Page", PAGES, key="page")
    st.session_state.setdefault("runs_root", os.environ.get(ENV_RUNS) or "runs")
    root = bar.text_input("Runs folder", key="runs_root", help=f"searched for SAE folders (env {ENV_RUNS})")
    entries = list_saes(root)
    chosen = None
    if entries:
        paths = [str(e.path) for e in entries]
        by_path = dict(zip(paths, entries, strict=True))
        if st.session_state.get("sae") not in by_path:
            st.session_state["sae"] = paths[0]
        path = bar.selectbox("SAE", paths, key="sae", format_func=lambda p: by_path[p].label(root))
        chosen = by_path[path]
        bar.caption(
            f"hook `{chosen.hook_name or '?'}` · d_in {chosen.d_in} · "
            + ("dashboards ✓" if chosen.has_dashboards else "no dashboards")
        )
    else:
        bar.info(
            f"No SAE under {root!r}. Train one (`g2interp train-sae`, `make demo`) or change the folder."
        )
    recorded = chosen.source_model if chosen is not None else ""
    st.session_state.setdefault("model_source", os.environ.get(ENV_MODEL) or recorded or EMBEDDED_MODEL)
    bar.text_input(
        "Model",
        key="model_source",
        help=(
            "for the Features page's steering and the Text and Moderation pages "
            f"(env {ENV_MODEL}; default: the SAE's, from its provenance)"
        ),
    )
    return root, entries, chosen
