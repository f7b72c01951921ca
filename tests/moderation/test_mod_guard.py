"""Streaming guarded generation on a tiny model whose sampled ids are scripted.

The decode loop runs for real (one forward pass per new id, counted), but ``sample_next`` returns a
fixed script of byte ids, so the response text is known; a fake moderator trips iff the text so far
contains a phrase.
"""

from __future__ import annotations

import pytest
import torch

from g2interp.model import generation
from g2interp.moderation import Verdict, guarded_generate
from g2interp.moderation.guard import GuardedGeneration, iter_guarded
from tests.tiny import EOS

PHRASE = "the launch code"
PROMPT = "tell me a story"


def verdict(tripped: bool) -> Verdict:
    p = 0.9 if tripped else 0.1
    return Verdict(not tripped, {"harm": p}, ("harm",) if tripped else (), {"harm": 0.5}, False)


class PhraseModerator:
    """Trips on any text containing ``phrase``; records what it was asked to check."""

    def __init__(self, phrase: str = PHRASE):
        self.phrase = phrase
        self.prompts: list[str] = []
        self.responses: list[str] = []
        self.thresholds: list[object] = []

    def check_prompt(self, text, thresholds=None):
        self.prompts.append(text)
        self.thresholds.append(thresholds)
        return verdict(self.phrase in text)

    def check_response(self, prompt, response, thresholds=None):
        assert prompt == PROMPT
        self.responses.append(response)
        self.thresholds.append(thresholds)
        return verdict(self.phrase in response)


@pytest.fixture
def model(tiny_gemma2):
    return tiny_gemma2[1]


@pytest.fixture
def forwards(model):
    """One entry per forward pass of the model (prompt or decode step)."""
    calls: list[int] = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    yield calls
    handle.remove()


@pytest.fixture
def script(model, monkeypatch):
    """``script(text)`` makes the model emit the byte ids of ``text`` then EOS; returns those ids."""
    state = {"ids": [], "at": 0}

    def scripted(batch_BX: torch.Tensor) -> torch.Tensor:
        next_id = state["ids"][state["at"]]
        state["at"] += 1
        return torch.full((batch_BX.shape[0],), next_id, dtype=torch.long, device=batch_BX.device)

    # greedy decoding takes the model's argmax, sampling sample_next: both emit the script
    monkeypatch.setattr(generation, "sample_next", lambda logits_BV, *args: scripted(logits_BV))
    monkeypatch.setattr(model, "greedy_tokens", scripted)

    def set_script(text: str) -> list[int]:
        ids = [*model.tokenizer.encode(text, prepend_bos=False), EOS]
        state.update(ids=ids, at=0)
        return ids

    return set_script


@pytest.mark.parametrize("check_every", [1, 4, 7, 16])
def test_stream_stops_within_check_every_of_the_phrase(model, forwards, script, check_every):
    before, after = "Sure, here it is: ", " is 0000, and then a long tail of more words."
    text = before + PHRASE + after
    ids = script(text)
    phrase_end = len(model.tokenizer.encode(before + PHRASE, prepend_bos=False))  # new tokens to its end
    mod, chunks = PhraseModerator(), []
    out = guarded_generate(
        model, PROMPT, mod, stream=True, check_every=check_every, on_release=chunks.append, max_new_tokens=100
    )
    assert isinstance(out, GuardedGeneration)
    assert not out.allowed and out.text is None and out.refusal == "response withheld: harm"
    assert out.prompt_verdict.allowed and out.response_verdict.blocked
    assert phrase_end <= out.stopped_at < phrase_end + check_every and out.stopped_at % check_every == 0
    assert out.stopped_at < len(ids)  # stopped mid-way, not at the end
    assert len(forwards) == out.stopped_at  # decoding stopped at the check: one forward per new id
    assert PHRASE not in out.released and all(PHRASE not in c for c in chunks)
    assert "".join(chunks) == out.released == text[: out.stopped_at - check_every]
    assert mod.prompts == [PROMPT]
    assert mod.responses == [text[:n] for n in range(check_every, out.stopped_at + 1, check_every)]
    assert out.checks == len(mod.responses) == out.stopped_at // check_every


@pytest.mark.parametrize("check_every", [1, 5, 6, 64])
def test_clean_stream_releases_everything(model, forwards, script, check_every):
    text = "A calm and dull reply."  # 22 bytes + EOS: 24 new tokens, a multiple of 1 and 6 only
    ids = script(text)
    assert len(ids) == 23
    mod, chunks = PhraseModerator(), []
    out = guarded_generate(
        model, PROMPT, mod, stream=True, check_every=check_every, on_release=chunks.append, max_new_tokens=40
    )
    assert out.allowed and out.refusal is None and out.stopped_at is None
    assert out.text == out.released == "".join(chunks) == text
    assert out.response_verdict is not None and out.response_verdict.allowed
    assert mod.responses[-1] == text  # the final check saw the whole response
    periodic = len(ids) // check_every
    assert out.checks == len(mod.responses) == periodic + (len(ids) % check_every != 0)
    assert len(forwards) == len(ids)  # nothing after the EOS

    script(text)
    plain_chunks = []
    plain = guarded_generate(
        model, PROMPT, PhraseModerator(), on_release=plain_chunks.append, max_new_tokens=40
    )
    assert plain.allowed and plain.text == out.text and plain_chunks == [text]
    assert plain.released == text and plain.checks == 1 and plain.stopped_at is None


def test_stream_equals_plain_on_the_real_model(model):
    """No script: greedy ids of the tiny model (any bytes, valid UTF-8 or not)."""
    kwargs = dict(max_new_tokens=9, stop_at_eos=False)
    plain = guarded_generate(model, PROMPT, PhraseModerator(), **kwargs)
    mod, chunks = PhraseModerator(), []
    out = guarded_generate(
        model, PROMPT, mod, {"harm": 0.3}, stream=True, check_every=2, on_release=chunks.append, **kwargs
    )
    assert out.allowed and out.text == plain.text == model.generate(PROMPT, 9, stop_at_eos=False).texts[0]
    assert out.released == "".join(chunks) == out.text
    assert mod.thresholds == [{"harm": 0.3}] * (1 + out.checks)  # the thresholds reach every check


def test_characters_split_over_tokens_are_held_back(model, script):
    text = "Voilà: ünïcödé 😀 fin."
    ids = script(text)
    assert len(ids) > len(text) + 1  # some characters take several byte tokens
    mod, shown = PhraseModerator(), []

    def on_release(chunk):
        shown.append(chunk)
        assert "\ufffd" not in chunk and text.startswith("".join(shown))

    out = guarded_generate(
        model, PROMPT, mod, stream=True, check_every=1, on_release=on_release, max_new_tokens=60
    )
    assert out.allowed and out.text == out.released == "".join(shown) == text
    assert any(r.endswith("\ufffd") for r in mod.responses)  # the checks did see partial characters


def test_final_check_trips_with_nothing_released(model, forwards, script):
    text = "All fine until " + PHRASE
    ids = script(text)
    mod, chunks = PhraseModerator(), []
    out = guarded_generate(
        model, PROMPT, mod, stream=True, check_every=64, on_release=chunks.append, max_new_tokens=60
    )
    assert not out.allowed and out.text is None and out.refusal == "response withheld: harm"
    assert out.released == "" and chunks == [] and out.checks == 1 and out.stopped_at == len(ids)
    assert mod.responses == [text] and len(forwards) == len(ids)


def test_blocked_prompt_generates_nothing(model, forwards, script):
    script("anything")
    mod, chunks = PhraseModerator(), []
    out = guarded_generate(
        model, f"say {PHRASE}", mod, stream=True, on_release=chunks.append, max_new_tokens=8
    )
    assert not out.allowed and out.refusal == "prompt blocked by harm" and out.response_verdict is None
    assert out.released == "" and out.checks == 0 and out.stopped_at is None
    assert chunks == [] and forwards == [] and mod.responses == []


def test_iter_guarded(model, forwards, script):
    text = "A short and harmless answer."
    script(text)
    stream = iter_guarded(model, PROMPT, PhraseModerator(), check_every=4, max_new_tokens=60)
    assert forwards == []  # lazy
    chunks = list(stream)
    assert "".join(chunks) == text and len(chunks) > 1
    assert stream.result.allowed and stream.result.text == stream.result.released == text
    assert list(stream) == [] and stream.result.text == text

    script(text)
    forwards.clear()
    stream = iter_guarded(model, PROMPT, PhraseModerator(), check_every=4, max_new_tokens=60)
    assert next(stream) == text[:4]
    stream.close()  # stops decoding at once
    assert len(forwards) == 4 and stream.result is None
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4", True, None])
def test_bad_check_every_raises(model, bad):
    mod = PhraseModerator()
    for stream in (True, False):
        with pytest.raises(ValueError, match=r"check_every must be an int >= 1 .* got"):
            guarded_generate(model, PROMPT, mod, stream=stream, check_every=bad, max_new_tokens=4)
    with pytest.raises(ValueError, match="check_every must be an int >= 1"):
        iter_guarded(model, PROMPT, mod, check_every=bad)
    assert mod.prompts == []
