"""The Features page's steering panel, driven through Streamlit's AppTest on the tiny world: both greedy
continuations shown side by side, each equal to what ``model.generate`` gives for the same inputs, and
bad inputs answered by a message naming the valid values."""

from __future__ import annotations

import html
import re

import pytest

from tests.explorer.helpers import D_SAE, MLP_HOOK
from tests.explorer.test_explorer_app import no_trouble, start, texts

PROMPT = "The weather today is"
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def resid_sae(world):
    from g2interp.sae import JumpReLUSAE

    return JumpReLUSAE.load(world.resid_sae, device="cpu")


def continuations(at) -> list[tuple[str, str]]:
    """(prompt, continuation) of each continuation shown, left to right."""
    found = [re.fullmatch(r"<pre[^>]*><i[^>]*>(.*)</i>(.*)</pre>", m.value, re.S) for m in at.markdown]
    return [(html.unescape(f[1]), html.unescape(f[2])) for f in found if f]


def steer_and_run(at, *, latent: int, value: float, mode: str = "clamp", prompt: str = PROMPT):
    """Fill the panel's inputs and press its button."""
    at.text_area(key="steer_prompt").input(prompt)
    at.number_input(key="steer_latent").set_value(latent)
    at.selectbox(key="steer_mode").set_value(mode)
    at.number_input(key="steer_value").set_value(value)
    at.number_input(key="steer_tokens").set_value(NEW_TOKENS)
    at.run()
    no_trouble(at)
    assert not at.error, texts(at.error)
    at.button(key="steer_run").click().run()
    no_trouble(at)
    result = at.session_state["steer_result"]
    assert (result["latent"], result["value"], result["mode"]) == (latent, value, mode)
    return at


def test_the_panel_steers_the_latent_shown_by_default(explorer_env):
    at = start()
    no_trouble(at)
    latent = at.number_input(key="latent").value
    assert at.number_input(key="steer_latent").value == latent
    assert any(f"Latent #{latent} reached" in c for c in texts(at.caption))  # a hint for the clamp value
    at.number_input(key="latent").set_value(7).run()
    no_trouble(at)
    assert at.number_input(key="steer_latent").value == 7  # follows the page's latent
    at.number_input(key="steer_latent").set_value(10).run()
    assert at.number_input(key="steer_latent").value == 10  # and may then be changed
    assert texts(at.subheader) == ["Latent #7"]
    assert not at.button(key="steer_run").disabled and not continuations(
        at
    )  # nothing generated before the press


def test_clamping_a_latent_shows_both_continuations_as_generate_gives_them(
    explorer_env, tiny_model, resid_sae
):
    from g2interp.sae import Steering

    at = steer_and_run(start(), latent=7, value=10.0)
    plain = tiny_model.generate(PROMPT, max_new_tokens=NEW_TOKENS)
    steered = tiny_model.generate(PROMPT, max_new_tokens=NEW_TOKENS, steer=[Steering(resid_sae, 7, 10.0)])
    assert plain.new_tokens != steered.new_tokens  # the test would otherwise prove nothing
    assert continuations(at) == [(PROMPT, plain.texts[0]), (PROMPT, steered.texts[0])]  # without, then with
    result = at.session_state["steer_result"]
    assert result["plain"]["ids"] == plain.new_tokens[0]
    assert result["steered"]["ids"] == steered.new_tokens[0]
    headings = [m.value for m in at.markdown]
    assert "**Without steering**" in headings and "**With latent #7 clamped to 10**" in headings
    assert any(c.startswith(f"{len(plain.new_tokens[0])} new tokens") for c in texts(at.caption))
    assert not any("unchanged" in i for i in texts(at.info))

    at.number_input(key="steer_value").set_value(20.0).run()  # inputs changed since the press
    no_trouble(at)
    assert continuations(at) == [(PROMPT, plain.texts[0]), (PROMPT, steered.texts[0])]
    assert any("for the inputs last run" in c for c in texts(at.caption))


@pytest.mark.parametrize(("mode", "value"), [("add", 6.0), ("scale", 0.0)])
def test_add_and_scale_modes(explorer_env, tiny_model, resid_sae, mode, value):
    from g2interp.sae import Steering

    at = steer_and_run(start(), latent=10, value=value, mode=mode)
    plain = tiny_model.generate(PROMPT, max_new_tokens=NEW_TOKENS)
    steer = [Steering(resid_sae, 10, value, mode=mode)]
    steered = tiny_model.generate(PROMPT, max_new_tokens=NEW_TOKENS, steer=steer)
    assert continuations(at) == [(PROMPT, plain.texts[0]), (PROMPT, steered.texts[0])]
    verb = {"add": "plus", "scale": "times"}[mode]
    assert f"**With latent #10 {verb} {value:g}**" in [m.value for m in at.markdown]
    if plain.new_tokens == steered.new_tokens:
        assert any("unchanged" in i for i in texts(at.info))


@pytest.mark.parametrize("latent", [D_SAE, D_SAE + 100, -1])
def test_a_latent_out_of_range_is_a_message_naming_the_valid_latents(explorer_env, latent):
    at = start()
    at.number_input(key="steer_latent").set_value(latent).run()
    no_trouble(at)
    assert texts(at.error) == [
        f"Latent {latent} is out of range: this SAE has {D_SAE} latents, valid latents are 0 to {D_SAE - 1}."
    ]
    assert at.button(key="steer_run").disabled
    assert "steer_result" not in at.session_state


def test_an_empty_prompt_is_a_message(explorer_env):
    at = start()
    at.text_area(key="steer_prompt").input("   ").run()
    no_trouble(at)
    assert any("prompt is empty" in e for e in texts(at.error))
    assert at.button(key="steer_run").disabled


def test_a_prompt_too_long_for_the_model_is_a_message(explorer_env, tiny_model):
    limit = tiny_model.cfg.max_position_embeddings
    at = start()
    at.text_area(key="steer_prompt").input("a" * limit).run()
    at.button(key="steer_run").click().run()
    no_trouble(at)
    assert any(e.startswith("Cannot generate with latent #") and str(limit) in e for e in texts(at.error))
    assert "steer_result" not in at.session_state


def test_an_sae_without_dashboards_can_be_steered(explorer_env, tiny_model, world):
    from g2interp.sae import JumpReLUSAE, Steering

    at = start()
    mlp = next(o for o in at.selectbox(key="sae").options if MLP_HOOK in o)
    at.selectbox(key="sae").set_value(mlp).run()
    no_trouble(at)
    assert any("No dashboards" in w for w in texts(at.warning))
    at = steer_and_run(at, latent=3, value=5.0)
    sae = JumpReLUSAE.load(world.mlp_sae, device="cpu")
    steered = tiny_model.generate(PROMPT, max_new_tokens=NEW_TOKENS, steer=[Steering(sae, 3, 5.0)])
    assert continuations(at)[1] == (PROMPT, steered.texts[0])
    assert at.session_state["steer_result"]["sae"] == str(world.mlp_sae)
