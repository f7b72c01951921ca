"""Custom policies from examples: fit, score, save/load identically, bad input; and a real policy on the
embedded model from one shared set's type (toxigen's hate speech, a fixture)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from g2interp.moderation import HeadSet, Moderator, PolicyFit
from g2interp.moderation.fit_cli import main as fit_main
from g2interp.moderation.policy_fit import read_examples
from tests.moderation.test_mod_probe import random_heads

FIXTURES = Path(__file__).parent / "fixtures"
SPAM = [
    "buy cheap watches now at our store",
    "limited offer: click here to win money",
    "free pills, order today",
]
HAM = ["the meeting moved to friday", "can you send me the report", "lunch at noon sounds good"]


def examples(n: int = 40, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        spam = i % 2 == 0
        texts.append(f"{rng.choice(SPAM if spam else HAM)} {rng.randint(0, 99)}")
        labels.append(int(spam))
    return texts, labels


def test_fit_policy_scores_saves_and_loads_identically(tiny_gemma2, tmp_path):
    _, model, _ = tiny_gemma2
    mod = Moderator(model, ["hate_speech"], heads=random_heads(model), scorer="probe")
    texts, labels = examples()
    fit = mod.fit_policy("spam", texts, labels, layers=(1, 2))
    assert isinstance(fit, PolicyFit) and fit.n_train + fit.n_val == len(texts)
    assert [p.name for p in mod.probe_policies] == ["hate_speech", "spam"]
    assert fit.val_ap > 0.9  # the tiny random model still separates two fixed vocabularies
    assert 0 < mod.default_thresholds["spam"] < 1
    probe = ["buy cheap watches now at our store 7", "the meeting moved to friday 3"]
    before = mod.score_prompts(probe)
    assert before[0]["spam"] > before[1]["spam"]
    mod.save_heads(tmp_path)
    again = Moderator(model, ["hate_speech", "spam"], heads=tmp_path, scorer="probe")
    assert again.score_prompts(probe) == before
    assert HeadSet.load(tmp_path).heads["spam"].cfg.metrics["val_ap"] == pytest.approx(fit.val_ap)
    with pytest.raises(ValueError, match="exists already"):
        mod.fit_policy("spam", texts, labels, layers=(1,))
    mod.fit_policy("spam", texts, labels, layers=(1,), replace=True)


def test_fit_policy_bad_input(tiny_gemma2, tmp_path):
    _, model, _ = tiny_gemma2
    mod = Moderator(model, heads=random_heads(model), scorer="probe")
    texts, labels = examples()
    with pytest.raises(ValueError, match="both classes"):
        mod.fit_policy("spam", texts, [1] * len(texts))
    with pytest.raises(ValueError, match="labels must be 0/1"):
        mod.fit_policy("spam", texts, ["maybe"] * len(texts))
    with pytest.raises(ValueError, match="one label per text"):
        mod.fit_policy("spam", texts, labels[:-1])
    with pytest.raises(ValueError, match="without dots"):
        mod.fit_policy("a.b", texts, labels)
    with pytest.raises(ValueError, match="empty"):
        mod.fit_policy("spam", ["", *texts[1:]], labels)
    with pytest.raises(TypeError, match="must be str"):
        mod.fit_policy("spam", [3, *texts[1:]], labels)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="'text' and 'label'"):
        read_examples(bad)
    bad.write_text('{"text": "a", "label": 1, "prompt": "p"}\n{"text": "b", "label": 0}\n')
    with pytest.raises(ValueError, match="all"):
        read_examples(bad)
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": t, "label": 1}) + "\n" for t in texts))
    assert fit_main(["spam", str(one), "--out", str(tmp_path / "h")]) == 2


@pytest.mark.slow
def test_fit_policy_on_a_shared_sets_type(embedded_model, tmp_path, capsys):
    """toxigen's hate_speech (400 fixture rows): fit on 300, held-out AP on the other 100 >= 0.85."""
    texts, labels, _ = read_examples(FIXTURES / "toxigen_hate.jsonl")
    mod = Moderator(embedded_model, scorer="probe")
    fit = mod.fit_policy("toxigen_hate", texts[:300], labels[:300])
    from sklearn.metrics import average_precision_score

    scores = [
        s["toxigen_hate"]
        for s in Moderator(embedded_model, ["toxigen_hate"], heads=mod.heads).score_prompts(texts[300:])
    ]
    ap = average_precision_score(labels[300:], scores)
    assert ap >= 0.85, (ap, fit.val_ap)
    mod.save_heads(tmp_path)
    loaded = Moderator(embedded_model, ["toxigen_hate"], heads=tmp_path, scorer="probe").score_prompts(
        texts[300:]
    )
    assert [s["toxigen_hate"] for s in loaded] == scores
