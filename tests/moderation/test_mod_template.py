"""Policies and templates: wording, token structure, injection resistance, truncation, bad input."""

from __future__ import annotations

import logging

import pytest

from g2interp.loading.tokenizer import GemmaTokenizer
from g2interp.moderation import (
    DEFAULT_POLICIES,
    SHIELDGEMMA_POLICIES,
    UNSAFE,
    HarmType,
    Policy,
    TemplateEncoder,
    render,
)
from g2interp.moderation.policies import resolve_policies
from tests.moderation.helpers import INJECTIONS
from tests.tiny import BOS, EOS, PAD, byte_tokenizer


@pytest.fixture(scope="module")
def encoder() -> TemplateEncoder:
    return TemplateEncoder(GemmaTokenizer(byte_tokenizer(chat=True), BOS, EOS, PAD), max_text_tokens=64)


def test_shieldgemma_policies():
    assert [p.name for p in DEFAULT_POLICIES] == [h.value for h in HarmType]
    hate = SHIELDGEMMA_POLICIES["hate_speech"]
    assert hate.definition.startswith(
        '"No Hate Speech": The prompt shall not contain or seek generation of content that'
    )
    assert hate.text_for(True).startswith('"No Hate Speech": The chatbot shall not generate content that')
    assert SHIELDGEMMA_POLICIES["dangerous_content"].definition.endswith("instructions for suicide).")


def test_render_matches_model_card():
    text = render(SHIELDGEMMA_POLICIES["harassment"], "hi there")
    assert text.startswith(
        "You are a policy expert trying to help determine whether a user prompt is in violation of the "
        "defined safety policies.\n\n<start_of_turn>\nHuman Question: hi there\n<end_of_turn>\n\n"
        'Our safety principle is defined in the below:\n\n* "No Harassment": The prompt shall not'
    )
    assert text.endswith(
        "\n\n===\n\nDoes the human question violate the above principle? Your answer must start with 'Yes' "
        "or 'No'. And then walk through step by step to be sure we answer correctly.\n\n"
    )
    resp = render(SHIELDGEMMA_POLICIES["harassment"], "q", "a")
    assert "<end_of_turn>\n<start_of_turn>\nChatbot Response: a\n<end_of_turn>" in resp
    assert "The chatbot shall not generate" in resp and "Does the Chatbot Response violate" in resp


def test_segment_ids_equal_rendered_string(encoder):
    """Assembled ids equal the tokenizer run on the rendered template (control tokens parsed)."""
    tok = encoder.tokenizer
    policy = SHIELDGEMMA_POLICIES["dangerous_content"]
    enc = encoder.encode_prompt("  How do I bake bread?  ")
    assert list(encoder.full(enc, policy)) == tok.encode(render(policy, "How do I bake bread?"))
    enc = encoder.encode_response("hi", "hello, how can I help?")
    assert list(encoder.full(enc, policy)) == tok.encode(render(policy, "hi", "hello, how can I help?"))


@pytest.mark.parametrize("injection", INJECTIONS)
def test_injection_leaves_structure_unchanged(encoder, injection):
    _check_injection(encoder, injection)


def _check_injection(encoder: TemplateEncoder, injection: str) -> None:
    """Removing the user spans leaves the same ids, piece for piece; no control id inside user text."""
    policy = SHIELDGEMMA_POLICIES["hate_speech"]
    cases = [
        (encoder.encode_prompt("hello"), encoder.encode_prompt(injection)),
        (encoder.encode_response("hello", "fine"), encoder.encode_response(injection, "fine")),
        (encoder.encode_response("fine", "hello"), encoder.encode_response("fine", injection)),
    ]
    for ref, enc in cases:
        full_ref, full = encoder.full(ref, policy), encoder.full(enc, policy)
        spans_ref, spans = sorted({ref.prompt, ref.pool}), sorted({enc.prompt, enc.pool})
        assert _outside(full, spans) == _outside(full_ref, spans_ref)
        assert spans[0].start == spans_ref[0].start
        for s in spans:
            assert not set(full[s.start : s.end]) & encoder.control_ids
        for cid in encoder.control_ids:
            assert full.count(cid) == full_ref.count(cid)


def _outside(ids, spans) -> list[tuple[int, ...]]:
    """The pieces of ``ids`` between user spans."""
    cuts = sorted(set(spans))
    pieces, pos = [], 0
    for s in cuts:
        pieces.append(tuple(ids[pos : s.start]))
        pos = s.end
    pieces.append(tuple(ids[pos:]))
    return pieces


def test_overlong_truncates_head_and_tail(encoder, caplog):
    text = " ".join(f"w{i}" for i in range(200))
    with caplog.at_level(logging.WARNING, logger="g2interp.moderation.template"):
        enc = encoder.encode_prompt(text)
    assert enc.truncated and "keeping its first 32 and last 32 tokens" in caplog.text
    user = list(enc.ids[enc.prompt.start : enc.prompt.end])
    full = encoder.tokenizer.encode(" " + text, prepend_bos=False, special_tokens_as_text=True)
    assert user == full[:32] + full[-32:]
    assert not encoder.encode_prompt("short").truncated


def test_overlong_error():
    enc = TemplateEncoder(
        GemmaTokenizer(byte_tokenizer(chat=True), BOS, EOS, PAD), max_text_tokens=8, overflow="error"
    )
    with pytest.raises(ValueError, match="max_text_tokens=8"):
        enc.encode_prompt("this text is much longer than eight bytes")


@pytest.mark.parametrize("bad", ["", "   \n\t "])
def test_empty_text_rejected(encoder, bad):
    with pytest.raises(ValueError, match="empty"):
        encoder.encode_prompt(bad)
    with pytest.raises(ValueError, match="response is empty"):
        encoder.encode_response("hi", bad)
    assert (
        encoder.encode_response(bad, "a reply").prompt.end
        - encoder.encode_response(bad, "a reply").prompt.start
        == 1
    )


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a list"]])
def test_non_string_rejected(encoder, bad):
    with pytest.raises(TypeError, match="must be a str"):
        encoder.encode_prompt(bad)


def test_policy_validation():
    with pytest.raises(ValueError, match="empty definition"):
        Policy("spam", "")
    with pytest.raises(ValueError, match="empty definition"):
        Policy("spam", "   ")
    with pytest.raises(ValueError, match="non-empty name"):
        Policy("", '"No Spam": no ads.')
    with pytest.raises(TypeError):
        Policy("spam", None)
    with pytest.raises(ValueError, match="empty response_definition"):
        Policy("spam", "x", response_definition=" ")
    assert Policy(" spam ", " x ").name == "spam"
    with pytest.raises(ValueError, match="unknown harm type"):
        resolve_policies(["violence"])
    with pytest.raises(ValueError, match="unique"):
        resolve_policies(["hate_speech", Policy("hate_speech", "x")])
    with pytest.raises(ValueError, match="no policy"):
        resolve_policies([])
    assert resolve_policies([HarmType.HARASSMENT])[0] is SHIELDGEMMA_POLICIES["harassment"]
    assert resolve_policies("unsafe") == (UNSAFE,)  # opt-in overall policy, not among the defaults
    assert UNSAFE not in DEFAULT_POLICIES


def test_tokenizer_without_chat_tokens_rejected():
    from tokenizers import Tokenizer, models

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}, unk_token="<unk>"))
    with pytest.raises(ValueError, match="Gemma chat tokenizer"):
        TemplateEncoder(GemmaTokenizer(backend, 2, 1, 0))
