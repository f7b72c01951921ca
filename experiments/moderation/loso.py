"""Leave-one-set-out and in-distribution runs of one head design on the ``unsafe`` label (or a type).

For every set S: fit on the train split of all other sets, calibrate on their validation split, score
every row of S. In-distribution: fit on the train split of every set, score the validation and test
splits. Raw logits go to ``runs/moderation/loso/<design>[.<target>].npz``; ``report.py`` turns them into
tables (and blends designs from them).

    python experiments/moderation/loso.py --design attention [--folds havoc xstest] [--target unsafe]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from common import LOSO_DIR, load_table, write_atomic

from g2interp.moderation.fit import fit_attention, fit_lexical, fit_pooled, raw_logits
from g2interp.moderation.recipe import SplitConfig, balance_weights

logger = logging.getLogger("loso")
LAYERS = (6, 9, 12)
DESIGNS = ("tfidf", "lexical", "pooled", "attention")


def parse_design(spec: str) -> tuple[str, dict]:
    """``kind`` or ``kind:key=value,...`` (fit options, e.g. ``attention:l2=0.01,n_queries=8``)."""
    kind, _, opts = spec.partition(":")
    if kind not in DESIGNS:
        raise SystemExit(f"unknown design {kind!r}; designs are {DESIGNS}")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = int(value) if value.isdigit() else float(value)
    return kind, kwargs


def fit(design: str, feats, y, w, rows=None):
    """One head of ``design`` fitted on feature rows ``rows`` (all by default; ``y``, ``w`` follow them)."""
    kind, kwargs = parse_design(design)
    if kind in ("tfidf", "lexical"):
        texts = feats.texts if rows is None else [feats.texts[i] for i in rows]
        return fit_lexical(texts, y, np.ones(len(y)) if kind == "tfidf" else w, **kwargs)
    if kind == "pooled":
        return fit_pooled(feats, y, w, LAYERS, rows=rows, **kwargs)
    return fit_attention(feats, y, w, LAYERS, rows=rows, **kwargs)


def save_npz(path, arrays) -> None:
    with open(path, "wb") as f:  # a file object: numpy would append ".npz" to a ".tmp" name
        np.savez(f, **arrays)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--design",
        nargs="+",
        required=True,
        help=f"one or more of {DESIGNS}[:key=value,...], fitted per fold",
    )
    ap.add_argument("--target", default="unsafe")
    ap.add_argument("--folds", nargs="*", default=None, help="sets to leave out (default: all)")
    ap.add_argument("--no-indist", action="store_true")
    ap.add_argument("--no-augment", action="store_true", help="leave out the classifier-addressed rows")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    layers = None if {parse_design(d)[0] for d in args.design} <= {"tfidf", "lexical"} else LAYERS
    rows, y, sets, split, feats = load_table(args.target, layers, augment=not args.no_augment)
    logger.info(
        "%d rows (%d augmented) loaded in %.0f s", len(rows), (split == "aug").sum(), time.time() - t0
    )
    LOSO_DIR.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.target == "unsafe" else f".{args.target}") + (".noaug" if args.no_augment else "")
    paths = {d: LOSO_DIR / f"{d.replace(':', '@')}{suffix}.npz" for d in args.design}
    outs = {d: dict(np.load(p)) if p.exists() else {} for d, p in paths.items()}
    for out in outs.values():
        out.update(y=y, sets=sets, split=split)
    cfg = SplitConfig()
    folds = args.folds if args.folds is not None else sorted(set(sets[split != "aug"]))
    jobs = ([] if args.no_indist else ["*indist*"]) + list(folds)
    for fold in jobs:
        t0 = time.time()
        if fold == "*indist*":
            tr, va, te = np.isin(split, ("train", "aug")), split == "val", split == "test"
        else:
            tr = (sets != fold) & np.isin(split, ("train", "aug"))
            va = (sets != fold) & (split == "val")
            te = sets == fold
        idx_tr = np.flatnonzero(tr)
        if len(np.unique(y[idx_tr])) < 2:
            continue
        w = balance_weights([rows[i] for i in idx_tr], y[idx_tr], cfg.set_power)
        key = "indist" if fold == "*indist*" else f"fold:{fold}"
        for design in args.design:
            if f"{key}:test_raw" in outs[design]:
                continue  # done in an earlier (interrupted) run
            head = fit(design, feats, y[idx_tr], w, rows=idx_tr)
            raw = raw_logits(head, feats).numpy()
            for part, m in (("val", va), ("test", te)):
                idx = np.flatnonzero(m)
                outs[design][f"{key}:{part}_idx"] = idx
                outs[design][f"{key}:{part}_raw"] = raw[idx]
            write_atomic(paths[design], lambda p, o=outs[design]: save_npz(p, o))
            logger.info("%s %s: trained on %d rows in %.0f s", design, key, len(idx_tr), time.time() - t0)
            t0 = time.time()


if __name__ == "__main__":
    main()
