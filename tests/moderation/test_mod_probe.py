"""Probe heads: save/load round trip, strict loading, serve-time features equal a plain capture."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from g2interp.moderation import HeadConfig, HeadSet, Moderator, ModeratorConfig, Policy, ProbeHead
from g2interp.moderation.probe import MANIFEST_FILE, WEIGHTS_FILE

TEXTS = [
    "How do I bake bread?",
    "you are an idiot <end_of_turn>",
    "hi",
    "Tell me about the Roman roads, please.",
]


def random_heads(model, seed: int = 0) -> HeadSet:
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    specs = {
        "hate_speech": dict(layers=(1,), poolings=("mean",), hidden=0),
        "harassment": dict(layers=(0, 2), poolings=("max", "last"), hidden=5),
    }
    heads = {}
    for name, spec in specs.items():
        head = ProbeHead(HeadConfig(name=name, d_model=d, platt=(0.7, -0.2), threshold=0.4, **spec))
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            head.mean_F.copy_(torch.randn(head.cfg.d_in, generator=gen))
            head.scale_F.copy_(torch.rand(head.cfg.d_in, generator=gen) + 0.5)
        heads[name] = head
    return HeadSet(heads, HeadSet.model_info_of(model.cfg), {"note": "random test heads"})


def test_round_trip(tiny_gemma2, tmp_path):
    _, model, _ = tiny_gemma2
    heads = random_heads(model)
    heads.save(tmp_path)
    loaded = HeadSet.load(tmp_path)
    assert loaded.layers == (0, 1, 2) and loaded.poolings == ("mean", "max", "last")
    assert loaded.provenance == {"note": "random test heads"}
    feats = torch.randn(6, 3, 3, model.cfg.d_model)
    a, b = heads.predict(feats, (0, 1, 2), POOL3), loaded.predict(feats, (0, 1, 2), POOL3)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert loaded.heads["harassment"].cfg == heads.heads["harassment"].cfg


POOL3 = ("mean", "max", "last")


def test_strict_loading(tiny_gemma2, tmp_path):
    _, model, _ = tiny_gemma2
    random_heads(model).save(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    for edit, match in (
        (lambda t: t.pop("hate_speech.net.0.weight"), "lacks"),
        (lambda t: t.__setitem__("hate_speech.mean_F", torch.zeros(3)), "shape"),
        (lambda t: t.__setitem__("ghost.net.0.weight", torch.zeros(1)), "no head"),
    ):
        broken = dict(tensors)
        edit(broken)
        save_file(broken, str(tmp_path / WEIGHTS_FILE))
        with pytest.raises(ValueError, match=match):
            HeadSet.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=MANIFEST_FILE):
        HeadSet.load(tmp_path / "nowhere")
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["format"] = 99
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format"):
        HeadSet.load(tmp_path)


def test_head_config_validation():
    with pytest.raises(ValueError, match="poolings"):
        HeadConfig(name="x", layers=(1,), poolings=("median",), d_model=8)
    with pytest.raises(ValueError, match="layers"):
        HeadConfig(name="x", layers=(), poolings=("mean",), d_model=8)
    with pytest.raises(ValueError, match="threshold"):
        HeadConfig(name="x", layers=(1,), poolings=("mean",), d_model=8, threshold=1.5)


def test_probe_scores_equal_plain_capture(tiny_gemma2):
    """Serve-time features (cached preamble, batched, stopped early) equal a plain full-prefix capture."""
    _, model, _ = tiny_gemma2
    heads = random_heads(model)
    mod = Moderator(
        model,
        ["hate_speech", "harassment"],
        heads=heads,
        scorer="probe",
        config=ModeratorConfig(batch_size=3),
    )
    got = mod.score_prompts(TEXTS)
    for text, scores in zip(TEXTS, got, strict=True):
        enc = mod.encoder.encode_prompt(text)
        names = [f"blocks.{x}.hook_resid_post" for x in (0, 1, 2)]
        acts = model.capture(torch.tensor([enc.ids]), names)
        pooled = torch.empty(1, 3, 3, model.cfg.d_model)
        for j, name in enumerate(names):
            span = acts[name][0, enc.pool.start : enc.pool.end]
            pooled[0, :, j] = torch.stack([span.mean(0), span.max(0).values, acts[name][0, -1]])
        want = heads.predict(pooled, (0, 1, 2), POOL3)
        for name in want:
            assert scores[name] == pytest.approx(float(want[name][0]), abs=1e-5)


def test_custom_policy_with_probe_scorer_is_generative(tiny_gemma2):
    _, model, _ = tiny_gemma2
    spam = Policy("spam", '"No Spam": no ads.')
    mixed = Moderator(model, ["hate_speech", spam], heads=random_heads(model), scorer="probe")
    assert [p.name for p in mixed.probe_policies] == ["hate_speech"]
    assert [p.name for p in mixed.generative_policies] == ["spam"]
    gen = Moderator(model, [spam], scorer="generative")
    probe_only = Moderator(model, ["hate_speech"], heads=random_heads(model), scorer="probe")
    a, b, c = mixed.score_prompts(TEXTS), gen.score_prompts(TEXTS), probe_only.score_prompts(TEXTS)
    for x, y, z in zip(a, b, c, strict=True):
        assert x["spam"] == pytest.approx(y["spam"], abs=1e-5)
        assert x["hate_speech"] == pytest.approx(z["hate_speech"], abs=1e-5)
    assert mixed.default_thresholds == {"hate_speech": 0.4, "spam": 0.5}
    # a redefinition under a built-in name is not what the head learned: it is scored generatively
    own = Policy("hate_speech", '"No Slurs": no slurs.')
    redefined = Moderator(model, [own], heads=random_heads(model), scorer="probe")
    assert redefined.probe_policies == () and redefined.generative_policies == (own,)


def test_heads_for_another_model(tiny_gemma2):
    _, model, _ = tiny_gemma2
    heads = random_heads(model)
    heads.model_info["d_model"] = 640
    with pytest.raises(ValueError, match="different model"):
        Moderator(model, heads=heads, scorer="probe")
    assert Moderator(model, heads=heads, scorer="auto").heads is None  # falls back to generative
