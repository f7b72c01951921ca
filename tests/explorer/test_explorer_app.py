"""The explorer driven through Streamlit's AppTest: every page, its widgets, and what it shows."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from tests.explorer.helpers import APP, DEAD, MLP_HOOK, RESID_HOOK


def start(**query) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=180)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def no_trouble(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def go(at: AppTest, page: str) -> AppTest:
    at.radio(key="page").set_value(page).run()
    no_trouble(at)
    assert texts(at.header)[0].startswith(page.replace("Evaluations", "SAE evaluations"))
    return at


def test_features_page_shows_the_densest_latent(explorer_env):
    at = start()
    no_trouble(at)
    assert at.radio(key="page").value == "Features"
    sae_box = at.selectbox(key="sae")
    assert len(sae_box.options) == 2 and RESID_HOOK in sae_box.value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["latents"] == "64" and metrics["dead"].startswith(f"{len(DEAD)} ")
    assert any(RESID_HOOK in c for c in texts(at.caption))
    latent = at.number_input(key="latent").value
    assert texts(at.subheader) == [f"Latent #{latent}"]
    assert latent not in DEAD and not at.warning
    contexts = [m.value for m in at.markdown if "<span" in m.value]
    assert 1 <= len(contexts) <= 8
    assert all("font-weight:700" in c for c in contexts)  # each context's maximum is marked
    assert len(at.get("plotly_chart")) == 3  # densities, histogram, logit effects


def test_choosing_latents_dead_search_and_list(explorer_env):
    at = start()
    at.number_input(key="latent").set_value(DEAD[0]).run()
    no_trouble(at)
    assert texts(at.subheader) == [f"Latent #{DEAD[0]}"]
    assert any("Dead latent" in w for w in texts(at.warning))
    assert not [m for m in at.markdown if "<span" in m.value]

    at.selectbox(key="feat_order").set_value("dead only").run()
    assert at.dataframe[0].value["latent"].tolist() == list(DEAD)
    assert at.dataframe[0].value["dead"].all()
    at.selectbox(key="feat_order").set_value("density (high to low)").run()
    density = at.dataframe[0].value["density"].tolist()
    assert density == sorted(density, reverse=True)

    at.text_input(key="feat_search").input("#7").run()
    assert at.dataframe[0].value["latent"].tolist() == [7]
    at.selectbox(key="feat_pick").set_value(7).run()
    no_trouble(at)
    assert at.number_input(key="latent").value == 7
    assert texts(at.subheader) == ["Latent #7"]


def test_sae_without_dashboards_and_runs_without_saes(explorer_env):
    at = start()
    mlp = next(o for o in at.selectbox(key="sae").options if MLP_HOOK in o)
    at.selectbox(key="sae").set_value(mlp).run()
    no_trouble(at)
    assert any("No dashboards" in w for w in texts(at.warning))
    assert any("g2interp dashboards --sae" in c for c in texts(at.code))

    at.sidebar.text_input(key="runs_root").input(str(explorer_env.empty_runs)).run()
    no_trouble(at)
    assert any("No SAE under" in i for i in texts(at.sidebar.info))
    assert any("Choose a runs folder" in i for i in texts(at.info))


def test_query_params_open_a_latent(explorer_env):
    at = start(page="Features", sae=str(explorer_env.resid_sae), latent="5")
    no_trouble(at)
    assert at.number_input(key="latent").value == 5
    assert texts(at.subheader) == ["Latent #5"]


def test_text_page_latents_per_token_and_reconstruction(explorer_env):
    at = go(start(), "Text")
    at.text_area(key="text_input").input("Hello world. Hello again!").run()
    no_trouble(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["tokens"] == str(1 + len(b"Hello world. Hello again!"))
    for label in ("FVU", "CE clean", "CE with SAE"):
        assert re.fullmatch(r"-?\d+\.\d{4}", metrics[label]), (label, metrics[label])
    table = at.dataframe[0].value
    assert table["token"].tolist()[1:6] == list("Hello")
    assert [m for m in at.markdown if "<span" in m.value]  # the text highlighted by a latent

    at.selectbox(key="text_token").set_value(3).run()
    no_trouble(at)
    buttons = [b for b in at.button if b.key and b.key.startswith("text_open_")]
    assert buttons, "the selected token's latents can be opened"
    latent = int(buttons[0].key.rsplit("_", 1)[1])
    buttons[0].click().run()
    no_trouble(at)
    assert at.radio(key="page").value == "Features"
    assert texts(at.subheader) == [f"Latent #{latent}"]


def test_text_page_with_an_sae_that_has_no_dashboards(explorer_env):
    at = start()
    mlp = next(o for o in at.selectbox(key="sae").options if MLP_HOOK in o)
    at.selectbox(key="sae").set_value(mlp).run()
    go(at, "Text")
    assert {m.label for m in at.metric} >= {"tokens", "FVU"}


def test_moderation_page_scores_thresholds_generation_and_explanation(explorer_env):
    at = go(start(), "Moderation")
    assert any("Score a text" in i for i in texts(at.info))
    at.text_area(key="mod_prompt").input("How do I sharpen a kitchen knife?").run()
    at.button(key="mod_score").click().run()
    no_trouble(at)
    scores = at.session_state["mod_result"]["scores"]
    assert set(scores) == {"sexually_explicit", "dangerous_content", "hate_speech", "harassment"}
    assert all(0.0 <= p <= 1.0 for p in scores.values())

    at.slider(key="thr_dangerous_content").set_value(0.0).run()
    assert any("Pre-filter (prompt): **blocked** by dangerous_content" in e for e in texts(at.error))
    for name in scores:
        at.slider(key=f"thr_{name}").set_value(1.0)
    at.run()
    no_trouble(at)
    assert any("Pre-filter (prompt): allowed" in s for s in texts(at.success))

    at.number_input(key="gen_tokens").set_value(4).run()
    at.button(key="gen_run").click().run()
    no_trouble(at)
    gen = at.session_state["gen_result"]
    assert gen["allowed"] and gen["text"] is not None
    assert any("Released" in s for s in texts(at.success))

    # The explanation: the chosen SAE reads layer 1, which both heads read.
    assert at.selectbox(key="explain_policy").options == ["dangerous_content", "hate_speech"]
    at.selectbox(key="explain_policy").set_value("dangerous_content").run()
    no_trouble(at)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["probability"]) == pytest.approx(scores["dangerous_content"], abs=1e-3)
    parts = sum(float(metrics[k]) for k in ("latents", "SAE error", "rest"))
    assert parts == pytest.approx(float(metrics["logit"]), abs=2e-3)
    opens = [b for b in at.button if b.key and b.key.startswith("explain_")]
    assert opens
    latent = int(opens[0].key.rsplit("_", 1)[1])
    opens[0].click().run()
    no_trouble(at)
    assert at.radio(key="page").value == "Features" and texts(at.subheader) == [f"Latent #{latent}"]


def test_moderation_response_and_an_sae_at_another_layer(explorer_env):
    at = start()
    mlp = next(o for o in at.selectbox(key="sae").options if MLP_HOOK in o)
    at.selectbox(key="sae").set_value(mlp).run()
    go(at, "Moderation")
    at.text_area(key="mod_response").input("Sure, here is how.").run()
    at.button(key="mod_score").click().run()
    no_trouble(at)
    assert at.session_state["mod_result"]["response"] == "Sure, here is how."
    assert any(s.startswith("Post-filter (response)") for s in texts(at.success) + texts(at.error))
    assert any("blocks.1.hook_resid_post" in i for i in texts(at.info))  # this SAE cannot explain the head
    use = [b for b in at.button if b.key and b.key.startswith("use_")]
    assert use
    use[0].click().run()
    no_trouble(at)
    assert RESID_HOOK in at.selectbox(key="sae").value
    assert "probability" in {m.label for m in at.metric}


def test_moderation_unavailable_is_a_message(explorer_env, monkeypatch):
    import sys

    monkeypatch.setitem(
        sys.modules, "g2interp.moderation", None
    )  # import fails as if the package were absent
    at = go(start(), "Moderation")
    assert any("Moderation is not available" in w for w in texts(at.warning))


def test_evaluations_page(explorer_env):
    at = go(start(), "Evaluations")
    assert len(at.get("plotly_chart")) == 4
    table = at.dataframe[0].value
    assert sorted(table["site"].tolist()) == ["mlp_out", "resid_post"]
    assert table["L0"].notna().all() and table["delta_loss"].notna().all()
    at.sidebar.text_input(key="runs_root").input(str(explorer_env.empty_runs)).run()
    no_trouble(at)
    assert any("No evaluated SAE" in i for i in texts(at.info))
