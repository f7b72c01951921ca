"""Fixtures for the activation-store tests: a tiny random Gemma 3 with a byte tokenizer, one thread."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from act_helpers import CORPUS, HOOKS, one_thread, tiny_model


@pytest.fixture(autouse=True)
def single_thread():
    """One OpenMP thread in every test here (module fixtures use ``one_thread`` themselves)."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture(scope="session")
def corpus() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def hooks() -> tuple[str, ...]:
    return HOOKS
