"""Evaluate the shipped moderation heads on the held-out test splits; write the results section.

Per labelled set (test split recorded by ``train_moderation_probes.py``; never used for training or model
selection): AU-PRC (average precision) of the overall score (max over the four harm-type probabilities)
against ``unsafe`` and of each harm type against its own labels, expected calibration error, and the
TPR / FPR of a threshold fixed on validation at 5 % FPR. Baselines: TF-IDF + logistic regression (same
train rows and weights) and the zero-shot generative scorer (ShieldGemma's P(Yes), max over the four
policies) on the same embedded model, the latter on a seeded subsample of up to 50 test rows per set.

Probe scores come from the cached features (texts cut to 128 tokens, as in training).

    python experiments/eval_moderation.py [--skip-zeroshot]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_moderation_probes import (
    HEADS_DIR,
    LAYERS,
    POOLINGS,
    RUN_DIR,
    SEED,
    TYPES,
    encode_row,
    load_splits,
    load_table,
    split_mask,
    tfidf_scores,
)

logger = logging.getLogger("eval_moderation")
OUT_MD = RUN_DIR / "eval_report.md"  # the moderation section of experiments/README.md
ZEROSHOT_FILE = RUN_DIR / "zeroshot.json"
ZEROSHOT_PER_SET = 50
TARGET_FPR = 0.05


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error, equal-width bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


def ap(y, s) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s))


def probe_probs(table, heads) -> dict[str, np.ndarray]:
    feats = torch.tensor(
        table.feats[:, [POOLINGS.index(p) for p in heads.poolings]][
            :, :, [LAYERS.index(x) for x in heads.layers]
        ]
    )
    return {k: v.numpy().astype(float) for k, v in heads.predict(feats, heads.layers, heads.poolings).items()}


def zeroshot(table, splits) -> dict[str, list[float]]:
    """P(Yes) of the four policies for a seeded subsample of each set's test rows (cached)."""
    if ZEROSHOT_FILE.exists():
        return json.loads(ZEROSHOT_FILE.read_text())
    from g2interp import load_model
    from g2interp.moderation import Moderator, ModeratorConfig

    torch.set_num_threads(1)
    model = load_model()
    mod = Moderator(model, scorer="generative", config=ModeratorConfig(max_text_tokens=128))
    rng = np.random.default_rng(SEED)
    out = {}
    for s in sorted(set(table.sets)):
        idx = np.flatnonzero((table.split == "test") & (table.sets == s))
        idx = np.sort(rng.choice(idx, size=min(ZEROSHOT_PER_SET, len(idx)), replace=False))
        encoded = [encode_row(mod.encoder, table.rows[i]) for i in idx]
        probs = mod.score_encoded(encoded).numpy()
        for i, row in zip(idx, probs, strict=True):
            out[f"{s}:{table.rows[i]['idx']}"] = row.tolist()
        logger.info("zero-shot %s: %d rows", s, len(idx))
    ZEROSHOT_FILE.write_text(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-zeroshot", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from g2interp.moderation.probe import HeadSet

    splits = load_splits()
    table = load_table(splits)
    heads = HeadSet.load(HEADS_DIR)
    probs = probe_probs(table, heads)
    overall = np.max(np.stack([probs[t] for t in TYPES]), axis=0)
    y_unsafe = table.labels["unsafe"]
    # threshold at 5 % FPR on validation negatives (pooled over sets)
    val_neg = (table.split == "val") & (y_unsafe == 0)
    thr = float(np.quantile(overall[val_neg], 1 - TARGET_FPR))
    tfidf = 1 / (1 + np.exp(-tfidf_scores(table, "unsafe")))
    # what Moderator.load() blocks with its default per-head thresholds (any of the four tripped)
    blocked = np.any(np.stack([probs[t] >= heads.heads[t].cfg.threshold for t in TYPES]), axis=0)
    zs = {} if args.skip_zeroshot else zeroshot(table, splits)
    zs_overall = {k: max(v) for k, v in zs.items()}
    lines = []
    rows_main = []
    for s in sorted(set(table.sets)):
        m = split_mask(table, "test", "unsafe") & (table.sets == s)
        y = y_unsafe[m]
        entry = {"set": s, "n": int(m.sum()), "pos": int((y == 1).sum())}
        if (y == 1).sum() and (y == 0).sum():
            entry.update(
                ap_probe=ap(y, overall[m]),
                ap_unsafe_head=ap(y, probs["unsafe"][m]),
                ap_tfidf=ap(y, tfidf[m]),
                ece=ece(overall[m], y),
                ece_unsafe_head=ece(probs["unsafe"][m], y),
                tpr=float((overall[m][y == 1] >= thr).mean()),
                fpr=float((overall[m][y == 0] >= thr).mean()),
                tpr_default=float(blocked[m][y == 1].mean()),
                fpr_default=float(blocked[m][y == 0].mean()),
            )
            keys = [f"{s}:{table.rows[i]['idx']}" for i in np.flatnonzero(m)]
            sub = np.array([k in zs_overall for k in keys])
            if sub.any() and len(set(y[sub])) == 2:
                entry["zs_n"] = int(sub.sum())
                entry["ap_zeroshot"] = ap(
                    y[sub], np.array([zs_overall[k] for k, u in zip(keys, sub, strict=True) if u])
                )
                entry["ap_probe_same_rows"] = ap(y[sub], overall[m][sub])
        elif (y == 1).sum():
            entry.update(recall=float((overall[m] >= thr).mean()), recall_default=float(blocked[m].mean()))
        rows_main.append(entry)
    per_type = []
    for t in TYPES:
        for s in sorted(set(table.sets)):
            m = split_mask(table, "test", t) & (table.sets == s)
            y = table.labels[t][m]
            if (y == 1).sum() >= 3 and (y == 0).sum() >= 3:
                per_type.append(
                    {
                        "type": t,
                        "set": s,
                        "n": int(m.sum()),
                        "pos": int((y == 1).sum()),
                        "ap": ap(y, probs[t][m]),
                        "ap_unsafe_head": ap(y, probs["unsafe"][m]),
                        "ece": ece(probs[t][m], y),
                        "prevalence": float(y.mean()),
                    }
                )
    results = {"threshold_5pct_fpr": thr, "overall": rows_main, "per_type": per_type}
    (RUN_DIR / "eval_results.json").write_text(json.dumps(results, indent=1))
    lines += render(results, json.loads((RUN_DIR / "train_results.json").read_text()), splits, heads)
    OUT_MD.write_text("\n".join(lines) + "\n")
    logger.info("wrote %s (the tables of the moderation section of experiments/README.md)", OUT_MD)
    return 0


def f3(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


INTRO = """## Moderation: ShieldGemma-style harm probabilities (issue 5)

`g2interp.moderation` scores a prompt (or a response to it) against ShieldGemma's four harm policies
(or custom ones). The embedded default (`Moderator.load()`) runs the ShieldGemma-formatted text once
through Gemma 3 270M, up to the deepest layer its probe heads read, and small heads on pooled residual
streams give a calibrated probability per harm type; `Moderator.from_checkpoint(path)` runs a local
ShieldGemma generatively (P(Yes) from the 'Yes'/'No' logits), every policy continuing one cached prefix.

```python
from g2interp.moderation import Moderator, Policy, guarded_generate

mod = Moderator.load()                                   # embedded 270M + shipped probe heads
mod.score_prompts(["How do I bake bread?"])              # [{'sexually_explicit': 0.0, ..., 'harassment': 0.0}]
mod.check_prompt("text")                                 # Verdict(allowed, scores, tripped, thresholds, truncated)
mod.check_response("prompt", "reply", thresholds=0.3)    # post-filter; one float or {policy: threshold}
Moderator.load(["hate_speech", Policy("spam", '"No Spam": The prompt shall not advertise.')])
sg = Moderator.from_checkpoint("path/to/shieldgemma-2b") # generative P(Yes), ShieldGemma's method
guarded_generate(model, "prompt", mod, max_new_tokens=64)  # GuardedGeneration(text, allowed, refusal, verdicts)
```
CLI: `g2interp moderate "text" [--response REPLY] [--checkpoint DIR] [--policy NAME] [--custom-policy NAME=DEF]`
prints the verdict as JSON (exit 0 allowed, 1 blocked, 2 bad input). Custom policies are scored generatively
(zero-shot on the 270M model: weak, see the zero-shot column) since no head knows their wording. Texts longer than
`max_text_tokens` (default 1,024) keep their first and last halves, with a logged warning and `truncated=True`
(or raise with `overflow="error"`). Each head's default threshold is its 2 % false-positive point on validation;
`Moderator.load(["unsafe", ...])` adds the opt-in overall head (trained on every set's `unsafe` label).

`python experiments/train_moderation_probes.py` (splits, feature cache, model selection, heads) then
`python experiments/eval_moderation.py` (this section) reproduce everything below; `python bench/moderation.py`
measures speed and memory. The data are the normalised sets in `../shared/data` (70 % of each original;
the rest is held out elsewhere); big sets were subsampled (davidson, diasafety, havoc, jigsaw: 1,500 rows
each, davidson 1,200 with a known `unsafe` label + 300 "offensive" rows) and every set split 60/20/20,
stratified by `unsafe`, seed 20240731 (recorded in `g2interp/moderation/heads/splits.json`). Heads are
trained on the train split with each set weighted equally and positives/negatives of a set sharing its length
distribution; layers, pooling, head type and regularisation are chosen on validation macro AU-PRC (mean
over sets); the Platt calibration is fitted on validation; the test split is used only here. User text is cut
to 128 tokens (first and last 64) for feature extraction.

Reference points (different data, not comparable row for row): on the OpenAI Moderation set, ShieldGemma-2B
reaches AU-PRC 0.887, the OpenAI Moderation API 0.856 and Llama Guard 1 0.847 (ShieldGemma paper, Table 1).
The numbers below are on other public sets, through a 270M model, with approximate label mappings.
"""


FINDINGS = """Findings (seed 20240731):

* The probes beat both baselines in distribution. Trained on the `unsafe` label directly, the opt-in
  `unsafe` head ranks best; the max of the four harm-type heads (the issue's "overall" score) trails it,
  because several sets' `unsafe` covers abuse the type labels do not (convabuse, davidson's offensive
  tweets) and the four heads are calibrated separately. TF-IDF is close on lexical sets (davidson,
  jigsaw, hatecheck) and far behind on prompts (wildguardtest, xstest) and long web text (havoc).
* Zero-shot P(Yes) on the 270M model is near chance: ShieldGemma's method needs ShieldGemma's fine-tuning;
  the generative path is for `Moderator.from_checkpoint` (and custom policies, with that caveat).
* Mid-depth residuals work best (layer 8 of 18; layers 2 and 14 are clearly worse) and pooling the text's
  tokens with the mean, concatenated with the last token before the policy, beats max or last alone. The
  heads read layers 8 and 10 only, so scoring stops after block 10.
* Each type head beats the `unsafe` head on its own labels, except where a set's `unsafe` is that type
  (hate on hatecheck and toxigen; harassment on jigsaw): the type labels are sparse (7-61 positives per set in
  test outside hatecheck and toxigen) and approximate, and per-type AP is the weakest part (hate speech on jigsaw, dangerous content
  on havoc).
* Transfer is the real limit: leaving a set out of training costs 0.06-0.29 AP on it (convabuse, havoc,
  diasafety, wildguardtest worst); TF-IDF loses less on convabuse and havoc. The in-distribution numbers
  above overstate what to expect on new traffic.
* Calibration (Platt on pooled validation) holds on most sets (ECE 0.05-0.10) but not on xstest (safe prompts
  that look unsafe are over-scored), diasafety (responses) or hatecheck (72 % positive: under-scored); default thresholds block 1-14 % of a set's safe
  rows (toxigen's neutral statements about groups, wildguardtest and diasafety highest)."""


BENCH_NOTE = """Embedded model, fp32, CPU, one torch thread on a shared 2-core machine (other jobs running); one pass
each (probe: best of 3), so rows are noisy: the 1- and 4-policy probe rows do the same work (re-timed
interleaved: 4.0-4.2 texts/s both), and the generative shared-prefix ratio for 4 policies was 1.4x in an
earlier run. The default probe moderator meets the >= 2.5x target for 4 policies by a wide margin: one prefix
forward, stopped after block 10, scores every policy. Generative scoring with the shared prefix gains only
1.4-1.9x over the naive way: ShieldGemma's template puts each policy and its question after the text (82-146
tokens for the four policies, prompt template), so with ~110-token prefixes the four suffixes cost more than
the prefix they share; the gain approaches 4x only as texts grow long. RSS stays flat over 1,000 sequential
`check_prompt` calls."""


def render(results: dict, train: dict, splits: dict, heads) -> list[str]:
    out = [INTRO, "### Held-out test results (`python experiments/eval_moderation.py`)", ""]
    out.append(
        "AU-PRC (average precision) of the overall score = max of the four harm-type probabilities, against "
        "each set's `unsafe` label; the opt-in `unsafe` head (trained on that label directly) beside it. "
        "Zero-shot = ShieldGemma's P(Yes) method on the same 270M model (not ShieldGemma), max over the four "
        "policies, on a seeded subsample (`zs n`), with the probe's AP on the same rows beside it."
    )
    out += [
        "",
        "| set | test n | unsafe | AP probe (max of 4) | AP unsafe head | AP TF-IDF | zs n | AP zero-shot | AP probe (zs rows) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["overall"]:
        if "ap_probe" in r:
            out.append(
                f"| {r['set']} | {r['n']} | {r['pos']} | {f3(r['ap_probe'])} | {f3(r['ap_unsafe_head'])} | {f3(r['ap_tfidf'])} | "
                f"{r.get('zs_n', '–')} | {f3(r.get('ap_zeroshot'))} | {f3(r.get('ap_probe_same_rows'))} |"
            )
        else:
            out.append(f"| {r['set']} | {r['n']} | {r['pos']} | (positives only) | | | | | |")
    out += [
        "",
        "Calibration and thresholds on the same test rows: ECE (10 bins) of the overall score and of the `unsafe` "
        f"head; TPR / FPR of the overall score at {results['threshold_5pct_fpr']:.3f} (5 % FPR on pooled "
        "validation negatives); TPR / FPR of `Moderator.load()`'s default verdict (blocked when any harm type "
        "reaches its head's threshold, each set at 2 % FPR on that type's validation negatives). For sets "
        "with positives only, the recall.",
        "",
        "| set | ECE overall | ECE unsafe head | TPR @5 % | FPR @5 % | TPR default | FPR default |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["overall"]:
        if "ap_probe" in r:
            out.append(
                f"| {r['set']} | {f3(r['ece'])} | {f3(r['ece_unsafe_head'])} | {f3(r['tpr'])} | {f3(r['fpr'])} | "
                f"{f3(r['tpr_default'])} | {f3(r['fpr_default'])} |"
            )
        else:
            out.append(f"| {r['set']} | | | {f3(r.get('recall'))} | | {f3(r.get('recall_default'))} | |")
    both = [r for r in results["overall"] if "ap_probe" in r]
    zs = [r for r in both if "ap_zeroshot" in r]

    def mean(key, rows=both):
        return np.mean([r[key] for r in rows])

    out += [
        "",
        f"Mean over the {len(both)} sets with both classes: AP probe (max of 4) {mean('ap_probe'):.3f}, "
        f"`unsafe` head {mean('ap_unsafe_head'):.3f}, TF-IDF {mean('ap_tfidf'):.3f}; on the zero-shot rows "
        f"zero-shot {mean('ap_zeroshot', zs):.3f} vs probe {mean('ap_probe_same_rows', zs):.3f}.",
        "",
        FINDINGS,
        "",
    ]
    out += [
        "Per harm type (test rows where the set labels that type, ≥ 3 of each class):",
        "",
        "| type | set | n | positives | AP type head | AP unsafe head | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["per_type"]:
        out.append(
            f"| {r['type']} | {r['set']} | {r['n']} | {r['pos']} | {f3(r['ap'])} | {f3(r['ap_unsafe_head'])} | {f3(r['ece'])} |"
        )
    out += [
        "",
        "### Model selection (validation, macro AP over sets)",
        "",
        "| target | layers | pooling | head | C | val macro AP | val pooled AP | TF-IDF val macro AP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, r in train["targets"].items():
        b = r["best"]
        out.append(
            f"| {t} | {b['layers']} | {'+'.join(b['poolings'])} | {'MLP ' + str(b['hidden']) if b['hidden'] else 'logistic'} | {b['C']} | "
            f"{f3(b['macro_ap'])} | {f3(b['pooled_ap'])} | {f3(train['tfidf_val'][t]['macro_ap'])} |"
        )
    out += [
        "",
        "Layer x pooling sweep for `unsafe` (logistic regression, C = 0.03; validation macro AP):",
        "",
    ]
    pools = sorted(
        {"+".join(r["poolings"]) for r in train["stage_a"]},
        key=lambda p: ["mean", "max", "last", "mean+last"].index(p),
    )
    out += ["| layer | " + " | ".join(pools) + " |", "|---" * (len(pools) + 1) + "|"]
    for layer in LAYERS:
        vals = {"+".join(r["poolings"]): r["macro_ap"] for r in train["stage_a"] if r["layers"] == [layer]}
        out.append(f"| {layer} | " + " | ".join(f3(vals.get(p)) for p in pools) + " |")
    out += [
        "",
        "### Leave-one-set-out transfer of the `unsafe` head (test split of the held-out set)",
        "",
        "| held-out set | n | positives | AP probe in-dist. | AP probe held out | AP TF-IDF in-dist. | AP TF-IDF held out |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, r in train["loso"].items():
        out.append(
            f"| {s} | {r['n']} | {r['positives']} | {f3(r['probe_in'])} | {f3(r['probe_out'])} | {f3(r['tfidf_in'])} | {f3(r['tfidf_out'])} |"
        )
    out += ["", "### Splits", "", "| set | train | validation | test |", "|---|---|---|---|"]
    for s, p in splits["sets"].items():
        out.append(f"| {s} | {len(p['train'])} | {len(p['val'])} | {len(p['test'])} |")
    bench = RUN_DIR / "bench.md"
    if bench.exists():
        out += [
            "",
            "### Speed and memory (`python bench/moderation.py --threads 1 --out runs/moderation/bench.md`)",
            "",
            bench.read_text().strip(),
            "",
            BENCH_NOTE,
        ]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
