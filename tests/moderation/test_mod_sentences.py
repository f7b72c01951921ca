"""Sentence views: a text is also scored one sentence at a time and each policy keeps its maximum."""

from __future__ import annotations

import pytest
import torch

from g2interp.moderation import HeadConfig, HeadSet, Moderator, ModeratorConfig, ProbeHead
from g2interp.moderation.sentences import sentences


def test_sentences_split_at_ends_lines_and_markup():
    assert sentences("How do I bake bread?", 8) == []
    assert sentences("One. Two!\nThree <end_of_turn> four", 8) == ["One.", "Two!", "Three", "four"]
    assert sentences("Only words. 123 ... !!!", 8) == []  # parts without letters are dropped
    assert sentences("a. b. c. d. e. f. g. h. i. j.", 3) == ["a. b. c.", "d. e. f. g.", "h. i. j."]
    with pytest.raises(ValueError, match="max_parts must be >= 2"):
        sentences("a. b.", 1)
    with pytest.raises(ValueError, match="max_sentences must be 0 .off. or an int >= 2"):
        ModeratorConfig(max_sentences=1)


def random_heads(model) -> HeadSet:
    """A pooled head with seeded random weights on block 0: scores that differ from text to text."""
    g = torch.Generator().manual_seed(0)
    head = ProbeHead(HeadConfig(name="x", layers=(0,), d_model=model.cfg.d_model))
    with torch.no_grad():
        head.weight_F.copy_(torch.randn(head.weight_F.shape, generator=g))
    return HeadSet({"x": head}, HeadSet.model_info_of(model.cfg))


def test_score_is_the_maximum_over_the_text_and_its_sentences(tiny_gemma2):
    _, model, _ = tiny_gemma2
    heads = random_heads(model)
    on = Moderator(model, ["x"], heads=heads, scorer="probe")
    off = Moderator(model, ["x"], heads=heads, scorer="probe", config=ModeratorConfig(max_sentences=0))
    text = "The first sentence is here. A second one follows!\nThen a line <end_of_turn> and a tag"
    views = [text, *sentences(text, on.config.max_sentences)]
    assert len(views) == 5
    alone = [d["x"] for d in off.score_prompts(views)]
    assert len(set(alone)) > 1  # the views do score differently, so the maximum is a real choice
    assert on.score_prompts([text, "One sentence only"])[0]["x"] == pytest.approx(max(alone), abs=1e-6)
    assert on.check_prompt(text).scores["x"] == pytest.approx(max(alone), abs=1e-6)
    assert on.score_prompts(["One sentence only"])[0]["x"] == pytest.approx(
        off.score_prompts(["One sentence only"])[0]["x"], abs=1e-6
    )
    replies = [d["x"] for d in off.score_responses(["a question"] * len(views), views)]
    assert on.check_response("a question", text).scores["x"] == pytest.approx(max(replies), abs=1e-6)


def test_sentence_discount_lowers_only_the_sentence_views(tiny_gemma2):
    _, model, _ = tiny_gemma2
    heads = random_heads(model)
    off = Moderator(model, ["x"], heads=heads, scorer="probe", config=ModeratorConfig(max_sentences=0))
    cfg = ModeratorConfig(max_sentences=8, sentence_discount=1.5)
    on = Moderator(model, ["x"], heads=heads, scorer="probe", config=cfg)
    text = "The first sentence is here. A second one follows!\nThen a line <end_of_turn> and a tag"
    whole, *parts = [d["x"] for d in off.score_prompts([text, *sentences(text, 8)])]
    logit = torch.logit(torch.tensor(parts, dtype=torch.float64))
    expected = max(whole, *torch.sigmoid(logit - 1.5).tolist())
    assert on.score_prompts([text])[0]["x"] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="sentence_discount must be a logit offset in .0, 20."):
        ModeratorConfig(sentence_discount=-1.0)
