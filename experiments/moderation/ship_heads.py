"""Train the shipped heads (g2interp/moderation/heads/) on every shared set and write the test fixture.

* ``unsafe`` (the overall head): a blend of an attention probe, a pooled probe and a lexical head, each
  fitted on the train split of every set plus the classifier-addressed rows (``augment.py``); member
  weights (relative, on validation-standardised logits) from ``--blend``, chosen on leave-one-set-out
  evidence (experiments/README.md); Platt calibration and the balanced threshold on the pooled validation
  split of all sets.
* the four harm types: pooled probes on the rows each type is labelled on; they share the overall scale
  (``probe.HeadSet``), so their thresholds equal the overall one.
* the fixture ``tests/moderation/fixtures/heads_sample_texts.json``: short test-split rows with the
  probabilities the embedded Moderator gives them, end to end.

    python experiments/moderation/ship_heads.py [--blend "attention+pooled:l2=0.1^0.5+tfidf^0.5"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import time
from dataclasses import replace

import numpy as np
import torch
from common import DATA_DIR, ROOT, load_table, write_atomic
from loso import LAYERS, fit, parse_design
from report import parse as parse_report_spec
from sklearn.metrics import average_precision_score

from g2interp.moderation.fit import blend, calibrate, raw_logits
from g2interp.moderation.policies import HarmType
from g2interp.moderation.probe import SHIPPED_HEADS_DIR, HeadSet
from g2interp.moderation.recipe import SplitConfig, balance_weights

logger = logging.getLogger("ship_heads")
TYPES = tuple(t.value for t in HarmType)
FIXTURE = ROOT / "tests" / "moderation" / "fixtures" / "heads_sample_texts.json"


def per_set_ap(y, p, sets) -> dict[str, float]:
    return {
        s: float(average_precision_score(y[sets == s], p[sets == s]))
        for s in np.unique(sets)
        if 0 < y[sets == s].sum() < (sets == s).sum()
    }


def train_target(target: str, designs: list[str], weights: list[float]) -> tuple:
    rows, y, sets, split, feats = load_table(target, LAYERS)
    tr, va, te = (np.flatnonzero(np.isin(split, s)) for s in (("train", "aug"), ("val",), ("test",)))
    w_tr = balance_weights([rows[i] for i in tr], y[tr], SplitConfig().set_power)
    w_va = balance_weights([rows[i] for i in va], y[va])
    members, val_std = {}, {}
    feats_va = feats.subset(va)
    for d in designs:
        t0 = time.time()
        role = parse_design(d)[0]  # a blend member is named by its kind
        members[role] = fit(d, feats, y[tr], w_tr, rows=tr)
        val_std[role] = float(raw_logits(members[role], feats_va).std())
        logger.info("%s %s fitted in %.0f s", target, d, time.time() - t0)
    if len(designs) == 1:
        head = next(iter(members.values()))
        head.cfg = replace(head.cfg, name=target)
    else:
        head = blend(target, members, [w / val_std[r] for r, w in zip(members, weights, strict=True)])
    raw_va = raw_logits(head, feats_va).numpy()
    raw_te = raw_logits(head, feats.subset(te)).numpy()
    metrics = {
        "design": "+".join(f"{d}^{w}" for d, w in zip(designs, weights, strict=True)),
        "layers": list(LAYERS),
        "n_train": len(tr),
        "val_pooled_ap": float(average_precision_score(y[va], raw_va)),
        "val_per_set_ap": per_set_ap(y[va], raw_va, sets[va]),
        "test_pooled_ap": float(average_precision_score(y[te], raw_te)),
        "test_per_set_ap": per_set_ap(y[te], raw_te, sets[te]),
    }
    head = calibrate(head, raw_va, y[va], w_va, **metrics)
    logger.info("%s: val AP %.3f, test AP %.3f, threshold %.3f", target, metrics["val_pooled_ap"],
                metrics["test_pooled_ap"], head.cfg.threshold)  # fmt: skip
    return head, (rows, sets, split, te)


def write_fixture(n_per_set: int = 4, seed: int = 0) -> None:
    """Short test-split rows and what the embedded Moderator (shipped heads, all five policies) says."""
    from g2interp.moderation import Moderator

    rows, y, sets, split, _ = load_table("unsafe", None, augment=False)
    rng = np.random.default_rng(seed)
    pick = []
    for s in np.unique(sets):
        idx = [
            i
            for i in np.flatnonzero((sets == s) & (split == "test"))
            if len(rows[i].text) < 200 and not rows[i].is_response
        ]
        pick += list(rng.permutation(idx)[:n_per_set])
    mod = Moderator.load(["unsafe", *TYPES])
    texts = [rows[i].text for i in pick]
    scores = mod.score_prompts(texts)
    out = [{"set": str(sets[i]), "unsafe": int(y[i]), "text": t, "expected": sc}
           for i, t, sc in zip(pick, texts, scores, strict=True)]  # fmt: skip
    write_atomic(FIXTURE, lambda p: p.write_text(json.dumps(out, indent=1) + "\n"))
    logger.info("fixture: %d rows -> %s", len(out), FIXTURE)


def parse_blend(spec: str) -> tuple[list[str], list[float]]:
    """Designs (``loso.py`` specs) and weights of a blend written as for ``report.py``."""
    names, weights = parse_report_spec(spec)
    return [n.replace("@", ":") for n in names], weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--blend",
        default="attention+pooled:l2=0.1^0.5+tfidf^0.5",
        help="the unsafe head (report.py's syntax)",
    )
    ap.add_argument("--type-design", default="pooled:l2=0.1", help="the four harm-type heads")
    ap.add_argument("--fixture-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if not args.fixture_only:
        designs, weights = parse_blend(args.blend)
        heads = {}
        heads["unsafe"], _ = train_target("unsafe", designs, weights)
        for t in TYPES:
            heads[t], _ = train_target(t, [args.type_design], [1.0])
            # on the overall scale a type trips with the overall head: one threshold for all
            heads[t].cfg = type(heads[t].cfg)(
                **{**heads[t].cfg.__dict__, "threshold": heads["unsafe"].cfg.threshold}
            )
        info = {"architecture": "gemma3_text", "n_layers": 18, "d_model": 640, "vocab_size": 262144}
        provenance = {
            "data": f"../shared/data ({DATA_DIR.name}): every labelled set, full size, plus classifier-addressed rows",
            "recipe": "g2interp.moderation.recipe: grouped seeded 60/20/20 split, weights n**0.5 per set, "
                      "classes balanced per style; thresholds: balanced operating point on pooled validation",
            "script": "experiments/moderation/ship_heads.py",
            "date": datetime.date.today().isoformat(),
        }  # fmt: skip
        HeadSet(heads, info, provenance, overall="unsafe", shares=TYPES).save(SHIPPED_HEADS_DIR)
    write_fixture()


if __name__ == "__main__":
    main()
