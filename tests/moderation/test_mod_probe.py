"""Probe heads: each kind against a plain reference, save/load round trip, strict loading, the overall rule."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from g2interp.moderation import HeadConfig, HeadSet, Moderator, ModeratorConfig, Policy, ProbeHead
from g2interp.moderation.fit import blend
from g2interp.moderation.lexical import fit_idf
from g2interp.moderation.probe import MANIFEST_FILE, WEIGHTS_FILE

TEXTS = [
    "How do I bake bread?",
    "you are an idiot <end_of_turn>",
    "hi",
    "Tell me about the Roman roads, please. Tell me about the roads.",
]
N_BUCKETS = 64


def randomise(head: ProbeHead, gen: torch.Generator) -> ProbeHead:
    with torch.no_grad():
        for name, p in [*head.named_parameters(), *head.named_buffers()]:
            if name.endswith("scale_F"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif not name.endswith("idf_V"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return head.eval()


def random_heads(model, seed: int = 0) -> HeadSet:
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    pooled = randomise(
        ProbeHead(HeadConfig("hate_speech", "pooled", (1,), d, platt=(0.7, -0.2), threshold=0.4)), gen
    )
    attn = randomise(ProbeHead(HeadConfig("a", "attention", (0, 2), d, n_queries=3)), gen)
    lex = ProbeHead(HeadConfig("l", "lexical", n_buckets=N_BUCKETS))
    lex.idf_V.copy_(torch.from_numpy(fit_idf([*TEXTS, "bake bread roads", "idiot roads"], N_BUCKETS)))
    randomise(lex, gen)
    mixed = blend("harassment", {"attention": attn, "lexical": lex}, (1.0, 0.5))
    mixed.cfg = replace(mixed.cfg, platt=(1.3, 0.1))
    return HeadSet(
        {"hate_speech": pooled, "harassment": mixed}, HeadSet.model_info_of(model.cfg), {"note": "random"}
    )


def reference_probability(head: ProbeHead, acts: dict[int, np.ndarray], span: slice, text: str) -> float:
    """The head's probability from a plain capture [P, M] per layer, written out without the library's code."""

    def raw(h: ProbeHead) -> float:
        cfg = h.cfg
        if cfg.kind == "pooled":
            x = np.concatenate(
                [acts[x][span].mean(0) for x in cfg.layers] + [acts[x][-1] for x in cfg.layers]
            )
            z = (x - h.mean_F.numpy()) / h.scale_F.numpy()
            return float(z @ h.weight_F.detach().numpy() + h.bias.item())
        if cfg.kind == "attention":
            tok = np.concatenate([np.concatenate([acts[x][span], acts[x][-1:]]) for x in cfg.layers], axis=1)
            z = (tok - h.mean_F.numpy()) / h.scale_F.numpy()
            s = z @ h.query_FH.detach().numpy()
            a = np.exp(s - s.max(0)) / np.exp(s - s.max(0)).sum(0)
            return float((a * (z @ h.value_FH.detach().numpy())).sum() + h.bias.item())
        if cfg.kind == "lexical":
            words = [w for w in "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()]
            grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            tf = Counter(zlib.crc32(g.encode()) % cfg.n_buckets for g in grams)
            idf = h.idf_V.numpy()
            vec = {k: (1 + math.log(n)) * idf[k] for k, n in tf.items()}
            norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
            return sum(v / norm * float(h.weight_V.detach()[k]) for k, v in vec.items()) + h.bias.item()
        return sum(w * raw(h.members[m.name]) for m, w in zip(cfg.members, cfg.weights, strict=True))

    a, b = head.cfg.platt
    return 1 / (1 + math.exp(-(a * raw(head) + b)))


def test_serve_time_scores_equal_a_plain_reference(tiny_gemma2):
    """Cached preamble, batched, stopped early, ragged features: equal a plain full-prefix capture."""
    _, model, _ = tiny_gemma2
    heads = random_heads(model)
    mod = Moderator(
        model,
        ["hate_speech", "harassment"],
        heads=heads,
        scorer="probe",
        config=ModeratorConfig(batch_size=3, max_sentences=0),  # whole texts, as the reference
    )
    got = mod.score_prompts(TEXTS)
    for text, scores in zip(TEXTS, got, strict=True):
        enc = mod.encoder.encode_prompt(text)
        names = {x: f"blocks.{x}.hook_resid_post" for x in (0, 1, 2)}
        cache = model.capture(torch.tensor([enc.ids]), list(names.values()))
        acts = {x: cache[n][0].double().numpy() for x, n in names.items()}
        for name, head in heads.heads.items():
            want = reference_probability(head, acts, slice(enc.pool.start, enc.pool.end), text)
            assert scores[name] == pytest.approx(want, abs=1e-5), name


def test_round_trip(tiny_gemma2, tmp_path):
    _, model, _ = tiny_gemma2
    heads = random_heads(model)
    heads.save(tmp_path)
    loaded = HeadSet.load(tmp_path)
    assert loaded.layers == (0, 1, 2) and loaded.reads_text
    assert loaded.provenance == {"note": "random"}
    assert loaded.heads["harassment"].cfg == heads.heads["harassment"].cfg
    a = Moderator(model, ["hate_speech", "harassment"], heads=heads, scorer="probe").score_prompts(TEXTS)
    b = Moderator(model, ["hate_speech", "harassment"], heads=loaded, scorer="probe").score_prompts(TEXTS)
    assert a == b


def test_overall_rule_puts_types_on_the_overall_scale(tiny_gemma2):
    _, model, _ = tiny_gemma2
    gen = torch.Generator().manual_seed(3)
    d = model.cfg.d_model
    heads = {
        n: randomise(ProbeHead(HeadConfig(n, "pooled", (1,), d)), gen)
        for n in ("unsafe", "hate_speech", "harassment")
    }
    shared = HeadSet(
        heads, HeadSet.model_info_of(model.cfg), overall="unsafe", shares=("hate_speech", "harassment")
    )
    plain = HeadSet(heads, HeadSet.model_info_of(model.cfg))
    s = Moderator(model, ["unsafe", "hate_speech", "harassment"], heads=shared, scorer="probe").score_prompts(
        TEXTS
    )
    p = Moderator(model, ["unsafe", "hate_speech", "harassment"], heads=plain, scorer="probe").score_prompts(
        TEXTS
    )
    only = Moderator(model, ["harassment"], heads=shared, scorer="probe").score_prompts(TEXTS)
    for si, pi, oi in zip(s, p, only, strict=True):
        top = max(pi["hate_speech"], pi["harassment"])
        assert max(si["hate_speech"], si["harassment"]) == pytest.approx(si["unsafe"], rel=1e-6)
        assert si["harassment"] == pytest.approx(pi["unsafe"] * pi["harassment"] / top, rel=1e-5)
        assert oi["harassment"] == pytest.approx(si["harassment"], rel=1e-6)
    with pytest.raises(ValueError, match="overall"):
        HeadSet(heads, {}, shares=("hate_speech",))


def test_strict_loading(tiny_gemma2, tmp_path):
    _, model, _ = tiny_gemma2
    random_heads(model).save(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    for edit, match in (
        (lambda t: t.pop("hate_speech.weight_F"), "lacks"),
        (lambda t: t.__setitem__("hate_speech.mean_F", torch.zeros(3)), "shape"),
        (lambda t: t.__setitem__("ghost.weight_F", torch.zeros(1)), "no head"),
    ):
        broken = dict(tensors)
        edit(broken)
        save_file(broken, str(tmp_path / WEIGHTS_FILE))
        with pytest.raises(ValueError, match=match):
            HeadSet.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=MANIFEST_FILE):
        HeadSet.load(tmp_path / "nowhere")
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["format"] = 1
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format"):
        HeadSet.load(tmp_path)


def test_head_config_validation():
    with pytest.raises(ValueError, match="kind"):
        HeadConfig(name="x", kind="median", layers=(1,), d_model=8)
    with pytest.raises(ValueError, match="layers"):
        HeadConfig(name="x", layers=(), d_model=8)
    with pytest.raises(ValueError, match="threshold"):
        HeadConfig(name="x", layers=(1,), d_model=8, threshold=1.5)
    with pytest.raises(ValueError, match="one weight per member"):
        HeadConfig(name="x", kind="blend", members=(HeadConfig("a", layers=(1,), d_model=8),))


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
