"""Fixtures for the moderation tests: tiny random Gemma 2 / 3 checkpoints with a chat tokenizer."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import one_thread, save_chat_checkpoint


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(
    scope="session", params=[("gemma2", 6), ("gemma2", 4096), ("gemma3", 6)], ids=lambda p: f"{p[0]}-w{p[1]}"
)
def tiny(request, tmp_path_factory):
    """(transformers model, g2interp model) for a tiny random checkpoint; window 6 or wider than any test text."""
    from g2interp import load_model

    kind, window = request.param
    folder = tmp_path_factory.mktemp(f"mod-{kind}-{window}")
    with one_thread():
        hf = save_chat_checkpoint(folder, kind, sliding_window=window)
        model = load_model(folder, device="cpu", dtype=torch.float32)
    return hf, model, folder


@pytest.fixture(scope="session")
def tiny_gemma2(tmp_path_factory):
    from g2interp import load_model

    folder = tmp_path_factory.mktemp("mod-gemma2")
    with one_thread():
        hf = save_chat_checkpoint(folder, "gemma2")
        model = load_model(folder, device="cpu", dtype=torch.float32)
    return hf, model, folder
