"""Streaming decoding: the same ids as ``generate``, one prompt only, no forward pass after a close."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from g2interp.model.generation import generate, generate_stream
from tests.activations.act_helpers import one_thread, tiny_model


@pytest.fixture(scope="module")
def model():
    with one_thread():
        yield tiny_model(seed=1)


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture
def forwards(model):
    """A list that gets one entry per forward pass of ``model``."""
    calls: list[int] = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    yield calls
    handle.remove()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(stop_at_eos=False),
        dict(temperature=1.0, seed=3),
        dict(temperature=0.7, top_k=5, top_p=0.9, seed=4),
    ],
    ids=["greedy", "greedy-no-eos", "sampled", "top-k-top-p"],
)
def test_stream_yields_the_ids_of_generate(model, kwargs):
    for prompt in ("hello there", ["hello there"]):
        ref = model.generate(prompt, 12, **kwargs)
        ids = list(model.generate_stream(prompt, 12, **kwargs))
        assert all(isinstance(t, int) for t in ids)
        assert ids == ref.new_tokens[0]
        assert model.tokenizer.decode(ids, skip_special_tokens=True) == ref.texts[0]
    tokens_1P = model.to_tokens("some ids")
    assert (
        list(generate_stream(model, tokens_1P[0], 9, **kwargs))
        == generate(model, tokens_1P, 9, **kwargs).new_tokens[0]
    )


def test_stream_stops_at_eos(model):
    sampled = dict(temperature=1.0, seed=5)  # greedy ids of a random tiny model repeat one id
    free = model.generate("abc", 8, stop_at_eos=False, **sampled).new_tokens[0]
    k = next(i for i in range(2, 8) if free[i] not in free[:i])  # a later id, new at i
    model.cfg = replace(model.cfg, eos_token_ids=(free[k],))
    try:
        ids = list(model.generate_stream("abc", 8, **sampled))
        assert ids == model.generate("abc", 8, **sampled).new_tokens[0] == free[: k + 1]
        assert list(model.generate_stream("abc", 8, stop_at_eos=False, **sampled)) == free
    finally:
        model.cfg = replace(model.cfg, eos_token_ids=(1,))


def test_closing_the_stream_stops_decoding(model, forwards):
    stream = model.generate_stream("hello", 20, stop_at_eos=False)
    assert forwards == []  # nothing runs before the first id is asked for
    first = [next(stream) for _ in range(3)]
    assert len(forwards) == 3  # the prompt's forward, then one per id after the first
    stream.close()
    assert len(forwards) == 3
    with pytest.raises(StopIteration):
        next(stream)
    assert first == model.generate("hello", 3, stop_at_eos=False).new_tokens[0]

    forwards.clear()
    for i, _ in enumerate(model.generate_stream("hello", 20, stop_at_eos=False)):
        if i == 4:
            break
    assert len(forwards) == 5  # a loop that breaks drops the stream: no forward beyond the last id

    forwards.clear()
    assert len(list(model.generate_stream("hello", 7, stop_at_eos=False))) == 7
    assert len(forwards) == 7  # no forward after the last id


def test_grad_mode_is_left_alone_between_ids(model):
    stream = model.generate_stream("hello", 4, stop_at_eos=False)
    next(stream)
    assert torch.is_grad_enabled()
    with torch.no_grad():
        next(stream)
    assert torch.is_grad_enabled()
    stream.close()


def test_bad_stream_arguments_raise_at_the_call(model):
    with pytest.raises(ValueError, match="one prompt; got a batch of 2"):
        model.generate_stream(["a", "b"], 4)
    with pytest.raises(ValueError, match="one prompt; got a batch of 2"):
        generate_stream(model, torch.full((2, 3), 5), 4)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        model.generate_stream("a", 0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate_stream("a", 3, top_p=0.0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate_stream("a", 10_000)
