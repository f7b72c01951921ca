"""Fixtures for the explorer tests: the tiny world (model folder, SAEs, dashboards, probe heads), one thread."""

from __future__ import annotations

import pytest

from tests.explorer.helpers import ExplorerWorld, build_world, environment, one_thread


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> ExplorerWorld:
    return build_world(tmp_path_factory.mktemp("explorer"))


@pytest.fixture
def explorer_env(world, monkeypatch) -> ExplorerWorld:
    """The explorer's environment variables pointed at the tiny world."""
    for key, value in environment(world).items():
        monkeypatch.setenv(key, value)
    return world


@pytest.fixture(scope="session")
def tiny_model(world):
    import torch

    from g2interp import load_model

    with one_thread():
        return load_model(world.model, device="cpu", dtype=torch.float32)
