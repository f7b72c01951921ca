"""Train the probe heads of the embedded moderator (g2interp/moderation/heads/) from the shared data (``../shared/data`` beside the repository).

Stages (each cached under ``runs/moderation/``, so reruns are cheap):

1. ``split``: subsample the big sets (seeded), split every labelled set 60/20/20 into train / validation /
   test, stratified by its ``unsafe`` label; recorded in ``runs/moderation/splits.json`` and copied next to
   the shipped heads.
2. ``extract``: one text-part forward per row on the embedded Gemma 3 270M (ShieldGemma prompt template;
   the response template for rows of kind ``response``), user text cut to 128 tokens (first and last 64);
   ``hook_resid_post`` of layers 2..14 pooled mean / max / last -> ``runs/moderation/features/<set>.safetensors``.
3. ``train``: per target (``unsafe`` and the four harm types), compare layers x poolings x heads (logistic
   regression, small MLP) on validation AU-PRC (macro over sets); baseline TF-IDF + logistic regression;
   leave-one-set-out transfer of the ``unsafe`` head; Platt calibration and default thresholds (2 % FPR) on
   validation; ship the selected heads and write the test fixture (stage ``fixture`` rewrites only that).
   The zero-shot generative baseline is run by ``experiments/eval_moderation.py``.

Nothing here trains on test rows; model selection uses validation only. Timings on the shared 2-core
machine (1 torch thread): extraction about 31 minutes for 14,357 rows (656k text-part tokens, 190-450
tokens/s depending on load), training about 6 minutes.

    python experiments/train_moderation_probes.py              # all stages
    python experiments/train_moderation_probes.py --stage extract
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from g2interp.moderation.policies import HarmType  # noqa: E402

logger = logging.getLogger("train_moderation_probes")

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data of the checkout
RUN_DIR = ROOT / "runs" / "moderation"
FEATURE_DIR = RUN_DIR / "features"
SPLITS_FILE = RUN_DIR / "splits.json"
HEADS_DIR = ROOT / "g2interp" / "moderation" / "heads"
SEED = 20240731
MAX_TEXT_TOKENS = 128
LAYERS = (2, 4, 6, 8, 10, 12, 14)
POOLINGS = ("mean", "max", "last")
TYPES = tuple(t.value for t in HarmType)
TARGETS = ("unsafe", *TYPES)
#: rows kept per set (None: all). davidson keeps rows whose ``unsafe`` is known plus 300 "offensive" rows.
SET_SIZES = {
    "ailuminate": None,
    "convabuse": None,
    "davidson": 1500,
    "diasafety": 1500,
    "hatecheck": None,
    "havoc": 1500,
    "jigsaw": 1500,
    "simple_safety_tests": None,
    "toxigen": None,
    "wildguardtest": None,
    "xstest": None,
}
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
#: default threshold of each head: this false-positive rate on its validation negatives (per head, so the
#: four together flag somewhat more: see the eval's combined FPR)
DEFAULT_FPR = 0.02


# ----------------------------------------------------------------------------- data
def read_set(name: str) -> list[dict]:
    rows = []
    with open(DATA_DIR / name / "data.jsonl") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            row["idx"] = i
            rows.append(row)
    return rows


def target(row: dict, name: str) -> int | None:
    """Label of ``row`` for a target: ``unsafe``, or a harm type (0 too where the row is safe overall)."""
    if name == "unsafe":
        return row["unsafe"]
    value = row["labels"][name]
    if value is None and row["unsafe"] == 0:
        return 0  # safe overall -> not this harm either: unsafe labels lend the type heads negatives
    return value


def subsample(name: str, rows: list[dict], rng: random.Random) -> list[dict]:
    size = SET_SIZES[name]
    if size is None or len(rows) <= size:
        return rows
    if name == "davidson":
        known = [r for r in rows if r["unsafe"] is not None]
        offensive = [r for r in rows if r["unsafe"] is None]
        return rng.sample(known, size - 300) + rng.sample(offensive, 300)
    return rng.sample(rows, size)


def make_splits() -> dict:
    rng = random.Random(SEED)
    splits: dict = {"seed": SEED, "fractions": SPLIT_FRACTIONS, "sets": {}}
    for name in SET_SIZES:
        rows = subsample(name, read_set(name), rng)
        strata = defaultdict(list)
        for r in rows:
            strata[r["unsafe"]].append(r["idx"])
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for key in sorted(strata, key=str):
            idx = sorted(strata[key])
            rng.shuffle(idx)
            n_train = round(len(idx) * SPLIT_FRACTIONS[0])
            n_val = round(len(idx) * SPLIT_FRACTIONS[1])
            parts["train"] += idx[:n_train]
            parts["val"] += idx[n_train : n_train + n_val]
            parts["test"] += idx[n_train + n_val :]
        splits["sets"][name] = {k: sorted(v) for k, v in parts.items()}
    return splits


def load_splits() -> dict:
    if not SPLITS_FILE.exists():
        SPLITS_FILE.parent.mkdir(parents=True, exist_ok=True)
        SPLITS_FILE.write_text(json.dumps(make_splits()))
    return json.loads(SPLITS_FILE.read_text())


def split_rows(splits: dict) -> dict[str, dict[int, tuple[str, dict]]]:
    """set -> line index -> (split, row) for every kept row."""
    out = {}
    for name, parts in splits["sets"].items():
        rows = {r["idx"]: r for r in read_set(name)}
        out[name] = {i: (part, rows[i]) for part, idx in parts.items() for i in idx}
    return out


# ----------------------------------------------------------------------------- features
def encode_row(encoder, row: dict):
    if row["kind"] == "response":
        return encoder.encode_response(row.get("prompt") or "", row["text"])
    return encoder.encode_prompt(row["text"])


def extract(splits: dict, threads: int) -> None:
    from g2interp import load_model
    from g2interp.moderation.probe import extract_features
    from g2interp.moderation.runner import PrefixRunner
    from g2interp.moderation.template import TemplateEncoder

    torch.set_num_threads(threads)
    FEATURE_DIR.mkdir(parents=True, exist_ok=True)
    model = load_model()
    encoder = TemplateEncoder(model.tokenizer, max_text_tokens=MAX_TEXT_TOKENS)
    runner = PrefixRunner(model)
    logging.getLogger("g2interp.moderation.template").setLevel(logging.ERROR)  # truncation is expected here
    rows_by_set = split_rows(splits)
    for name, rows in rows_by_set.items():
        path = FEATURE_DIR / f"{name}.safetensors"
        if path.exists():
            continue
        idx = sorted(rows)
        encoded = [encode_row(encoder, rows[i][1]) for i in idx]
        n_tokens = sum(len(e.ids) - e.n_shared for e in encoded)
        t0 = time.time()
        feats = extract_features(runner, encoded, LAYERS, POOLINGS, batch_size=16, max_batch_tokens=2048)
        dt = time.time() - t0
        logger.info(
            "%s: %d rows, %d text-part tokens in %.0f s (%.0f tok/s)",
            name,
            len(idx),
            n_tokens,
            dt,
            n_tokens / dt,
        )
        save_file(
            {
                "features": feats.contiguous(),
                "idx": torch.tensor(idx),
                "truncated": torch.tensor([e.truncated for e in encoded]),
            },
            str(path),
            metadata={
                "layers": json.dumps(LAYERS),
                "poolings": json.dumps(POOLINGS),
                "max_text_tokens": str(MAX_TEXT_TOKENS),
            },
        )


def load_features(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, n_pool, n_layer, M] float32, line indices [N])."""
    data = load_file(str(FEATURE_DIR / f"{name}.safetensors"))
    return data["features"].numpy(), data["idx"].numpy()


# ----------------------------------------------------------------------------- training table
class Table(NamedTuple):
    """Every kept row with its features and labels (features stay [N, pool, layer, M])."""

    feats: np.ndarray
    sets: np.ndarray
    split: np.ndarray
    labels: dict[str, np.ndarray]
    chars: np.ndarray
    rows: list[dict]


def load_table(splits: dict) -> Table:
    rows_by_set = split_rows(splits)
    feats, sets, split, rows = [], [], [], []
    for name, rows_of in rows_by_set.items():
        f, idx = load_features(name)
        feats.append(f)
        for i in idx:
            part, row = rows_of[int(i)]
            sets.append(name)
            split.append(part)
            rows.append(row)
    labels = {
        t: np.array([np.nan if target(r, t) is None else target(r, t) for r in rows], dtype=float)
        for t in TARGETS
    }
    chars = np.array([len(r["text"]) + len(r.get("prompt") or "") for r in rows])
    return Table(np.concatenate(feats), np.array(sets), np.array(split), labels, chars, rows)


def balance_weights(sets: np.ndarray, y: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Each source weighs the same; within a source, positives and negatives weigh half each and share
    the source's length distribution (4 length bins), so neither set size nor text length is a shortcut."""
    bins = np.digitize(chars, [40, 100, 250])
    w = np.zeros(len(y))
    for s in np.unique(sets):
        in_s = sets == s
        classes = np.unique(y[in_s])
        p_bin = np.bincount(bins[in_s], minlength=4) / in_s.sum()
        for c in classes:
            cell = in_s & (y == c)
            n_bin = np.bincount(bins[cell], minlength=4)
            q = np.where(n_bin > 0, p_bin, 0.0)
            q = q / q.sum()
            w[cell] = q[bins[cell]] / n_bin[bins[cell]] / len(classes) * (1.0 if len(classes) == 2 else 0.5)
    return w / w.mean()


def matrix(table: Table, mask: np.ndarray, layers: tuple[int, ...], poolings: tuple[str, ...]) -> np.ndarray:
    pi = [POOLINGS.index(p) for p in poolings]
    li = [LAYERS.index(x) for x in layers]
    return table.feats[mask][:, pi][:, :, li].reshape(int(mask.sum()), -1)


class Fitted(NamedTuple):
    layers: tuple[int, ...]
    poolings: tuple[str, ...]
    hidden: int
    C: float
    mean: np.ndarray
    scale: np.ndarray
    state: dict
    """Torch state of ``nn.Sequential`` (the ProbeHead's ``net``)."""


def fit_head(table, mask, y, w, layers, poolings, C: float, hidden: int = 0, seed: int = 0) -> Fitted:
    """Logistic regression (L2, sklearn's ``C`` convention, full-batch L-BFGS in torch) or a
    1-hidden-layer MLP (AdamW, 40 epochs, weight decay ``C``), on standardised features with sample weights."""
    X = matrix(table, mask, layers, poolings)
    mean, scale = X.mean(0), X.std(0) + 1e-6
    Z = (X - mean) / scale
    Zt = torch.tensor(Z, dtype=torch.float32)
    yt, wt = torch.tensor(y, dtype=torch.float32), torch.tensor(w, dtype=torch.float32)
    if hidden == 0:
        W = torch.zeros(Z.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS(
            [W, b], lr=1, max_iter=300, tolerance_grad=1e-6, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad()
            bce = torch.nn.functional.binary_cross_entropy_with_logits(Zt @ W + b, yt, reduction="none")
            loss = (bce * wt).sum() + 0.5 / C * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
        state = {"0.weight": W.detach()[None].clone(), "0.bias": b.detach().clone()}
        return Fitted(layers, poolings, 0, C, mean, scale, state)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(Z.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=C)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(40):  # epochs of minibatch 256
        for batch in torch.randperm(len(yt), generator=gen).split(256):
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(
                    net(Zt[batch])[:, 0], yt[batch], reduction="none"
                )
                * wt[batch]
            ).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Fitted(
        layers, poolings, hidden, C, mean, scale, {k: v.detach().clone() for k, v in net.state_dict().items()}
    )


def logits(fit: Fitted, table: Table, mask: np.ndarray) -> np.ndarray:
    Z = (matrix(table, mask, fit.layers, fit.poolings) - fit.mean) / fit.scale
    if fit.hidden:
        net = torch.nn.Sequential(
            torch.nn.Linear(Z.shape[1], fit.hidden), torch.nn.ReLU(), torch.nn.Linear(fit.hidden, 1)
        )
    else:
        net = torch.nn.Sequential(torch.nn.Linear(Z.shape[1], 1))
    net.load_state_dict(fit.state)
    with torch.no_grad():
        return net(torch.tensor(Z, dtype=torch.float32))[:, 0].double().numpy()


def per_set_ap(scores: np.ndarray, y: np.ndarray, sets: np.ndarray, min_each: int = 3) -> dict[str, float]:
    """AU-PRC (average precision) per set that has at least ``min_each`` positives and negatives."""
    from sklearn.metrics import average_precision_score

    out = {}
    for s in np.unique(sets):
        m = sets == s
        if (y[m] == 1).sum() >= min_each and (y[m] == 0).sum() >= min_each:
            out[str(s)] = float(average_precision_score(y[m], scores[m]))
    return out


def evaluate(scores, table, mask, t) -> dict:
    """Macro AP over sets (the selection metric), pooled AP and per-set AP for target ``t``."""
    from sklearn.metrics import average_precision_score

    y = table.labels[t][mask]
    known = ~np.isnan(y)
    per = per_set_ap(scores[known], y[known], table.sets[mask][known])
    return {
        "macro_ap": float(np.mean(list(per.values()))) if per else float("nan"),
        "pooled_ap": float(average_precision_score(y[known], scores[known])),
        "per_set": per,
    }


def split_mask(table: Table, part: str, t: str, exclude: str | None = None) -> np.ndarray:
    m = (table.split == part) & ~np.isnan(table.labels[t])
    return m & (table.sets != exclude) if exclude else m


def fit_for(table, t, layers, poolings, C, hidden=0, exclude=None) -> Fitted:
    m = split_mask(table, "train", t, exclude)
    y = table.labels[t][m]
    w = balance_weights(table.sets[m], y, table.chars[m])
    return fit_head(table, m, y, w, layers, poolings, C, hidden)


def platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Calibration ``sigmoid(a z + b)`` fitted on (unweighted) validation logits."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=1000).fit(z[:, None], y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


POOLING_CHOICES = (("mean",), ("max",), ("last",), ("mean", "last"))
C_GRID = (0.003, 0.03, 0.3)


def search(table: Table) -> dict:
    """Stage A: layer x pooling for ``unsafe`` (logistic, C=0.03); stage B per target: the best configs x C,
    two-layer concatenation, and an MLP. Everything scored on validation macro AP."""
    results: dict = {"stage_a": [], "targets": {}}
    for layer in LAYERS:
        for pools in POOLING_CHOICES:
            fit = fit_for(table, "unsafe", (layer,), pools, 0.03)
            m = split_mask(table, "val", "unsafe")
            ev = evaluate(logits(fit, table, m), table, m, "unsafe")
            results["stage_a"].append({"layers": [layer], "poolings": list(pools), **ev})
            logger.info(
                "unsafe layer %2d %-12s val macro AP %.3f pooled %.3f",
                layer,
                "+".join(pools),
                ev["macro_ap"],
                ev["pooled_ap"],
            )
    ranked = sorted(results["stage_a"], key=lambda r: -r["macro_ap"])
    top = [(tuple(r["layers"]), tuple(r["poolings"])) for r in ranked[:3]]
    best_layers = [r["layers"][0] for r in ranked if tuple(r["poolings"]) == top[0][1]][:2]
    top.append((tuple(sorted(best_layers)), top[0][1]))
    for t in TARGETS:
        m = split_mask(table, "val", t)
        cands = []
        for layers, pools in top:
            for C in C_GRID:
                fit = fit_for(table, t, layers, pools, C)
                cands.append((evaluate(logits(fit, table, m), table, m, t), fit))
        best_lin = max(cands, key=lambda c: c[0]["macro_ap"])[1]
        for hidden in (64,):
            fit = fit_for(table, t, best_lin.layers, best_lin.poolings, 0.01, hidden)
            cands.append((evaluate(logits(fit, table, m), table, m, t), fit))
        rows = [
            {"layers": list(f.layers), "poolings": list(f.poolings), "C": f.C, "hidden": f.hidden, **ev}
            for ev, f in cands
        ]
        best_ev, best = max(cands, key=lambda c: c[0]["macro_ap"])
        results["targets"][t] = {
            "candidates": rows,
            "best": {
                "layers": list(best.layers),
                "poolings": list(best.poolings),
                "C": best.C,
                "hidden": best.hidden,
                **best_ev,
            },
        }
        logger.info(
            "%s: best %s %s C=%g hidden=%d val macro AP %.3f",
            t,
            best.layers,
            best.poolings,
            best.C,
            best.hidden,
            best_ev["macro_ap"],
        )
    return results


def tfidf_scores(table: Table, t: str, exclude: str | None = None) -> np.ndarray:
    """TF-IDF (word 1-2 grams) + logistic regression trained on the same rows and weights; scores all rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = [f"{r.get('prompt') or ''} {r['text']}".strip() for r in table.rows]
    m = split_mask(table, "train", t, exclude)
    y = table.labels[t][m]
    w = balance_weights(table.sets[m], y, table.chars[m])
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=50000)
    X = vec.fit_transform([texts[i] for i in np.flatnonzero(m)])
    lr = LogisticRegression(C=3.0, max_iter=3000).fit(X, y, sample_weight=w)
    return lr.decision_function(vec.transform(texts))


def train(splits: dict) -> None:
    from g2interp.moderation.probe import HeadConfig, HeadSet, ProbeHead

    torch.set_num_threads(1)
    table = load_table(splits)
    logger.info("table: %d rows, features %s", len(table.rows), table.feats.shape[1:])
    results = search(table)
    heads, summary = {}, {}
    for t in TARGETS:
        b = results["targets"][t]["best"]
        fit = fit_for(table, t, tuple(b["layers"]), tuple(b["poolings"]), b["C"], b["hidden"])
        m = split_mask(table, "val", t)
        z, y = logits(fit, table, m), table.labels[t][m]
        a, c = platt(z, y)
        p_val = 1 / (1 + np.exp(-(a * z + c)))
        threshold = float(np.quantile(p_val[y == 0], 1 - DEFAULT_FPR))
        cfg = HeadConfig(
            name=t,
            layers=fit.layers,
            poolings=fit.poolings,
            d_model=table.feats.shape[-1],
            hidden=fit.hidden,
            platt=(a, c),
            threshold=threshold,
            metrics={
                "val_macro_ap": b["macro_ap"],
                "val_pooled_ap": b["pooled_ap"],
                "val_per_set_ap": b["per_set"],
                "C": fit.C,
                "threshold_rule": f"{DEFAULT_FPR:.0%} FPR on this target's validation negatives",
                "val_tpr_at_threshold": float((p_val[y == 1] >= threshold).mean()),
            },
        )
        head = ProbeHead(cfg)
        head.mean_F.copy_(torch.tensor(fit.mean, dtype=torch.float32))
        head.scale_F.copy_(torch.tensor(fit.scale, dtype=torch.float32))
        head.net.load_state_dict(fit.state)
        heads[t] = head
        summary[t] = b
    # unsafe labels lend negatives to the type heads; also: how well does the unsafe head rank each type?
    unsafe_fit = fit_for(
        table,
        "unsafe",
        tuple(summary["unsafe"]["layers"]),
        tuple(summary["unsafe"]["poolings"]),
        summary["unsafe"]["C"],
        summary["unsafe"]["hidden"],
    )
    results["unsafe_head_on_types"] = {}
    for t in TYPES:
        m = split_mask(table, "val", t)
        results["unsafe_head_on_types"][t] = evaluate(logits(unsafe_fit, table, m), table, m, t)
    results["tfidf_val"] = {}
    for t in TARGETS:
        m = split_mask(table, "val", t)
        results["tfidf_val"][t] = evaluate(tfidf_scores(table, t)[m], table, m, t)
    results["loso"] = loso(table, summary["unsafe"])
    model_info = {"architecture": "gemma3_text", "n_layers": 18, "d_model": 640, "vocab_size": 262144}
    provenance = {
        "script": "experiments/train_moderation_probes.py",
        "seed": SEED,
        "max_text_tokens": MAX_TEXT_TOKENS,
        "data": "../shared/data of the checkout (see g2interp/moderation/heads/splits.json)",
        "model": "embedded gemma-3-270m (GGUF Q4_K_M), fp32 CPU",
        "template": "ShieldGemma prompt template (response template for rows of kind 'response'), features from the text part",
    }
    HeadSet(heads, model_info, provenance).save(HEADS_DIR)
    (HEADS_DIR / "splits.json").write_text(json.dumps(splits, separators=(",", ":")) + "\n")
    (RUN_DIR / "train_results.json").write_text(json.dumps(results, indent=1))
    write_fixture(table, HeadSet.load(HEADS_DIR))
    logger.info("saved %d heads to %s", len(heads), HEADS_DIR)


def loso(table: Table, best: dict) -> dict:
    """Leave-one-set-out: the unsafe head (selected config) trained without a set, tested on its test split."""
    out = {}
    layers, pools = tuple(best["layers"]), tuple(best["poolings"])
    full = fit_for(table, "unsafe", layers, pools, best["C"], best["hidden"])
    for s in np.unique(table.sets):
        m = split_mask(table, "test", "unsafe") & (table.sets == s)
        y = table.labels["unsafe"][m]
        if (y == 1).sum() < 3 or (y == 0).sum() < 3:
            continue
        held = fit_for(table, "unsafe", layers, pools, best["C"], best["hidden"], exclude=str(s))
        tf_in, tf_out = tfidf_scores(table, "unsafe")[m], tfidf_scores(table, "unsafe", exclude=str(s))[m]
        from sklearn.metrics import average_precision_score as ap

        out[str(s)] = {
            "n": int(m.sum()),
            "positives": int((y == 1).sum()),
            "probe_in": float(ap(y, logits(full, table, m))),
            "probe_out": float(ap(y, logits(held, table, m))),
            "tfidf_in": float(ap(y, tf_in)),
            "tfidf_out": float(ap(y, tf_out)),
        }
        logger.info("LOSO %s: %s", s, out[str(s)])
    return out


FIXTURE = ROOT / "tests" / "moderation" / "fixtures" / "heads_sample.safetensors"
FIXTURE_SETS = ("convabuse", "davidson", "hatecheck", "havoc", "jigsaw", "toxigen", "xstest")


def write_fixture(table: Table, heads) -> None:
    """A fixed validation sample (bf16 features the heads read + labels) and the AP the shipped heads get
    on it; and 12 of its texts with their probabilities (from the fp32 features) for an end-to-end test."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(SEED)
    pick = []
    for s in FIXTURE_SETS:  # 16 validation rows per set, plus havoc positives so every head is exercised
        val = np.flatnonzero((table.split == "val") & (table.sets == s))
        pick += list(rng.choice(val, size=16, replace=False))
    for t in ("sexually_explicit", "dangerous_content"):
        pos = np.flatnonzero((table.split == "val") & (table.sets == "havoc") & (table.labels[t] == 1))
        pick += list(rng.choice(np.setdiff1d(pos, pick), size=4, replace=False))
    pick = np.array(sorted(pick))
    pi = [POOLINGS.index(p) for p in heads.poolings]
    li = [LAYERS.index(x) for x in heads.layers]
    feats32 = torch.tensor(table.feats[pick][:, pi][:, :, li])
    feats16 = feats32.to(torch.bfloat16)  # a small fixture; the expected AP is computed from these values
    probs = heads.predict(feats16.float(), heads.layers, heads.poolings)
    probs32 = heads.predict(feats32, heads.layers, heads.poolings)
    meta = {"layers": heads.layers, "poolings": heads.poolings, "sets": FIXTURE_SETS, "expected_ap": {}}
    tensors = {"features": feats16.contiguous()}
    for t in TARGETS:
        y = table.labels[t][pick]
        tensors[f"label.{t}"] = torch.tensor(np.nan_to_num(y, nan=-1.0), dtype=torch.float32)
        known = ~np.isnan(y)
        if t in probs and (y[known] == 1).sum() >= 2 and (y[known] == 0).sum() >= 2:
            meta["expected_ap"][t] = float(average_precision_score(y[known], probs[t].numpy()[known]))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(FIXTURE), metadata={"meta": json.dumps(meta)})
    texts = [
        {
            "set": str(table.sets[i]),
            "idx": int(table.rows[i]["idx"]),
            "text": table.rows[i]["text"],
            "expected": {t: float(probs32[t][k]) for t in TYPES},
        }
        for k, i in list(enumerate(pick))[::10][:12]
    ]
    (FIXTURE.parent / "heads_sample_texts.json").write_text(json.dumps(texts, indent=1) + "\n")
    logger.info("fixture: %d rows, expected AP %s", len(pick), meta["expected_ap"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["split", "extract", "train", "fixture", "all"], default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the forward passes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    splits = load_splits()
    counts = {n: {k: len(v) for k, v in p.items()} for n, p in splits["sets"].items()}
    logger.info("splits: %s", counts)
    if args.stage in ("extract", "all"):
        extract(splits, args.threads)
    if args.stage in ("train", "all"):
        train(splits)
    if args.stage == "fixture":  # (also written by ``train``)
        from g2interp.moderation.probe import HeadSet

        write_fixture(load_table(splits), HeadSet.load(HEADS_DIR))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
