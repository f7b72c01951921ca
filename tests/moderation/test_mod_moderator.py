"""Moderator API on tiny models: verdicts, thresholds, guarded generation, CLI, bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from g2interp.moderation import (
    HeadConfig,
    HeadSet,
    Moderator,
    ModeratorConfig,
    Policy,
    ProbeHead,
    Verdict,
    guarded_generate,
)
from g2interp.moderation import cli as mod_cli

WORD_HEADS = {"hate_speech": 1.0, "harassment": -1.0}


def constant_heads(model, bias: dict[str, float]) -> HeadSet:
    """Heads whose logit is a constant: probability sigmoid(bias)."""
    heads = {}
    for name, b in bias.items():
        head = ProbeHead(HeadConfig(name=name, layers=(0,), d_model=model.cfg.d_model))
        with torch.no_grad():
            head.bias.fill_(b)
        heads[name] = head
    return HeadSet(heads, HeadSet.model_info_of(model.cfg))


@pytest.fixture(scope="module")
def moderator(tiny_gemma2):
    _, model, _ = tiny_gemma2
    return Moderator(model, list(WORD_HEADS), heads=constant_heads(model, WORD_HEADS), scorer="probe")


def test_verdicts_and_thresholds(moderator):
    v = moderator.check_prompt("anything")
    p_hate, p_har = torch.sigmoid(torch.tensor(1.0)).item(), torch.sigmoid(torch.tensor(-1.0)).item()
    assert v.scores == pytest.approx({"hate_speech": p_hate, "harassment": p_har})
    assert v.blocked and not v.allowed and v.tripped == ("hate_speech",) and not v.truncated
    assert v.thresholds == {"hate_speech": 0.5, "harassment": 0.5}
    assert moderator.check_prompt("anything", thresholds=0.9).allowed
    assert moderator.check_prompt("anything", thresholds={"harassment": 0.1}).tripped == (
        "hate_speech",
        "harassment",
    )
    r = moderator.check_response("a prompt", "a reply", thresholds={"hate_speech": 0.99})
    assert r.allowed and r.tripped == ()
    with pytest.raises(ValueError, match="unknown policies"):
        moderator.check_prompt("x", thresholds={"violence": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        moderator.check_prompt("x", thresholds=1.5)
    with pytest.raises(TypeError, match="thresholds"):
        moderator.check_prompt("x", thresholds="high")


def test_scores_shape(moderator):
    out = moderator.score_prompts(["a", "bb", "ccc"])
    assert len(out) == 3 and all(set(d) == set(WORD_HEADS) for d in out)
    assert len(moderator.score_prompts("just one")) == 1
    assert len(moderator.score_responses(["", "q"], ["r1", "r2"])) == 2


def test_bad_input(moderator, tiny_gemma2):
    with pytest.raises(ValueError, match="empty"):
        moderator.score_prompts([""])
    with pytest.raises(ValueError, match="empty"):
        moderator.check_prompt("  \n")
    with pytest.raises(ValueError, match="response is empty"):
        moderator.check_response("hi", "")
    with pytest.raises(TypeError, match="texts"):
        moderator.score_prompts(["ok", 5])
    with pytest.raises(TypeError, match="must be a str"):
        moderator.check_prompt(None)
    with pytest.raises(TypeError, match="must be a str"):
        moderator.check_response("hi", 3)
    with pytest.raises(TypeError):
        moderator.score_prompts(42)
    with pytest.raises(ValueError, match="no texts"):
        moderator.score_prompts([])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        moderator.score_responses(["a", "b"], ["c"])
    _, model, _ = tiny_gemma2
    with pytest.raises(ValueError, match="empty definition"):
        Moderator(model, [Policy("spam", "")], scorer="generative")
    with pytest.raises(ValueError, match="scorer"):
        Moderator(model, scorer="magic")
    with pytest.raises(TypeError, match="HookedGemma"):
        Moderator("gemma")
    with pytest.raises(ValueError, match="max_text_tokens"):
        ModeratorConfig(max_text_tokens=0)
    with pytest.raises(ValueError, match="overflow"):
        ModeratorConfig(overflow="drop")


def test_overlong_text(tiny_gemma2, caplog):
    _, model, _ = tiny_gemma2
    heads = constant_heads(model, WORD_HEADS)
    cut = Moderator(model, list(WORD_HEADS), heads=heads, config=ModeratorConfig(max_text_tokens=16))
    with caplog.at_level(logging.WARNING, logger="g2interp.moderation.template"):
        v = cut.check_prompt("x" * 100)
    assert v.truncated and "keeping its first 8 and last 8 tokens" in caplog.text
    strict = Moderator(
        model, list(WORD_HEADS), heads=heads, config=ModeratorConfig(max_text_tokens=16, overflow="error")
    )
    with pytest.raises(ValueError, match="max_text_tokens=16"):
        strict.check_prompt("x" * 100)


def test_model_without_tokenizer(tiny_gemma2):
    _, model, _ = tiny_gemma2
    tok = model.tokenizer
    model.tokenizer = None
    try:
        with pytest.raises(ValueError, match="no tokenizer"):
            Moderator(model, scorer="generative")
    finally:
        model.tokenizer = tok


def test_checkpoint_not_gemma(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a Gemma 2 / Gemma 3 checkpoint"):
        Moderator.from_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        Moderator.from_checkpoint(tmp_path / "missing")


def test_from_checkpoint_is_generative(tiny_gemma2):
    _, _, folder = tiny_gemma2
    mod = Moderator.from_checkpoint(folder, ["dangerous_content"], device="cpu", dtype="float32")
    assert mod.heads is None and [p.name for p in mod.generative_policies] == ["dangerous_content"]
    assert 0.0 < mod.score_prompts("hi")[0]["dangerous_content"] < 1.0


def test_guarded_generate(tiny_gemma2):
    _, model, _ = tiny_gemma2
    blocked = Moderator(model, ["hate_speech"], heads=constant_heads(model, {"hate_speech": 5.0}))
    out = guarded_generate(model, "hello", blocked, max_new_tokens=3)
    assert not out.allowed and out.text is None and out.response_verdict is None
    assert out.refusal == "prompt blocked by hate_speech" and out.prompt_verdict.scores["hate_speech"] > 0.99
    allowed = Moderator(model, ["hate_speech"], heads=constant_heads(model, {"hate_speech": -5.0}))
    out = guarded_generate(model, "hello", allowed, max_new_tokens=3, stop_at_eos=False)
    assert out.allowed and out.refusal is None and isinstance(out.text, str)
    assert out.text == model.generate("hello", 3, stop_at_eos=False).texts[0]
    if out.text.strip():
        assert out.response_verdict is not None and out.response_verdict.allowed
    out = guarded_generate(model, "hello", allowed, thresholds={"hate_speech": 0.0}, max_new_tokens=3)
    assert not out.allowed and out.text is None and out.refusal.startswith("prompt blocked")


def test_guarded_generate_withholds_response(tiny_gemma2, monkeypatch):
    """The post-filter can withhold what the pre-filter let through."""
    _, model, _ = tiny_gemma2
    mod = Moderator(model, ["hate_speech"], heads=constant_heads(model, {"hate_speech": -5.0}))
    seen = []

    def check_response(prompt, response, thresholds=None):
        seen.append((prompt, response))
        return Verdict(False, {"hate_speech": 0.9}, ("hate_speech",), {"hate_speech": 0.5}, False)

    monkeypatch.setattr(mod, "check_response", check_response)
    monkeypatch.setattr(model.tokenizer, "decode", lambda ids, skip_special_tokens=False: "a reply")
    out = guarded_generate(model, "hello", mod, max_new_tokens=2)
    assert seen == [("hello", "a reply")]
    assert not out.allowed and out.text is None and out.refusal == "response withheld: hate_speech"
    assert out.prompt_verdict.allowed and out.response_verdict.blocked


def test_cli(monkeypatch, capsys, tiny_gemma2):
    _, model, _ = tiny_gemma2

    def fake_load(policies=None, *, config=None, device=None, heads=None):
        return Moderator(model, policies, heads=heads or constant_heads(model, WORD_HEADS), config=config)

    monkeypatch.setattr(Moderator, "load", staticmethod(fake_load))
    code = mod_cli.main(["some text", "--policy", "hate_speech", "--policy", "harassment"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["tripped"] == ["hate_speech"] and out["classified"] == "prompt"
    code = mod_cli.main(["q", "--response", "r", "--policy", "harassment", "--threshold", "0.9"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["allowed"] and out["classified"] == "response" and out["scorer"] == "probe"
    assert mod_cli.main(["", "--policy", "harassment"]) == 2
    assert "empty" in capsys.readouterr().err
    assert mod_cli.main(["x", "--custom-policy", "nodefinition"]) == 2
