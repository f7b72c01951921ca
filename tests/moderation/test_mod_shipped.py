"""The shipped probe heads: they load, fit the embedded model, and reproduce their recorded AP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from g2interp.moderation import HarmType, HeadSet
from g2interp.moderation.probe import SHIPPED_HEADS_DIR

FIXTURES = Path(__file__).parent / "fixtures"


def test_shipped_heads_load():
    heads = HeadSet.load(SHIPPED_HEADS_DIR)
    assert {h.value for h in HarmType} <= set(heads.heads)
    assert heads.model_info == {
        "architecture": "gemma3_text",
        "n_layers": 18,
        "d_model": 640,
        "vocab_size": 262144,
    }
    for head in heads.heads.values():
        assert head.cfg.metrics["val_macro_ap"] > 0.5
        assert 0 < head.cfg.threshold < 1


def test_shipped_heads_reproduce_recorded_ap():
    """On a fixed validation sample (features stored), the heads give the AP recorded when they were saved."""
    from sklearn.metrics import average_precision_score

    path = FIXTURES / "heads_sample.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    data = load_file(str(path))
    heads = HeadSet.load(SHIPPED_HEADS_DIR)
    assert tuple(meta["layers"]) == heads.layers and tuple(meta["poolings"]) == heads.poolings
    probs = heads.predict(data["features"].float(), heads.layers, heads.poolings)
    assert meta["expected_ap"], "the fixture records no AP"
    for name, expected in meta["expected_ap"].items():
        y = data[f"label.{name}"].numpy()
        known = y >= 0
        got = average_precision_score(y[known], probs[name].numpy()[known])
        assert got == pytest.approx(expected, abs=1e-6), name
        assert got > 1.5 * (y[known] == 1).mean(), name  # well above chance
