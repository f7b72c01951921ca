"""Fast leave-one-set-out sweeps with pooled linear probes: which layers, pooling, weighting, sets, and
whether the harm-type heads add evidence to the overall score.

Reads the small per-layer poolings that ``extract_tokens.py`` stores beside the token activations
(``mean_NAM``: mean over the classified tokens, ``last_NAM``: the text part's last token, every block up to
the deepest extracted), fits a weighted logistic regression per fold (seconds), and prints LOSO AP per set
with its mean and worst. Used to choose the recipe before the slower attention probes run (``loso.py``).

    python experiments/moderation/sweep_pooled.py                 # one config (flags), LOSO table
    python experiments/moderation/sweep_pooled.py --grid layers   # layer x pooling table (also l2, power, drop)
    python experiments/moderation/sweep_pooled.py --stack-types   # overall = unsafe head vs max with type heads
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
from common import AUG_JSONL, RUN_DIR, feature_files, read_all
from safetensors import safe_open
from sklearn.metrics import average_precision_score

from g2interp.moderation.datasets import TARGETS, read_jsonl
from g2interp.moderation.fit import balanced_threshold, fit_platt
from g2interp.moderation.recipe import SplitConfig, balance_weights, split_of

logger = logging.getLogger("sweep_pooled")
NEW_SETS = ("gptfuzz_responses", "jbb_artifacts", "xstest_completions", "coconot_contrast", "edos",
            "catqa_dangerousqa", "aart")  # fmt: skip


class Table:
    """Every row (shared sets, then the classifier-addressed rows) with its labels, set, split, poolings."""

    def __init__(self, augment: bool = True):
        shared = read_all()
        aug = read_jsonl(AUG_JSONL) if augment and AUG_JSONL.exists() else []
        self.rows = shared + aug
        stems = list(dict.fromkeys(r.source for r in shared)) + (["augment"] if aug else [])
        parts = []
        for path in feature_files(stems):
            with safe_open(str(path), "pt") as f:
                parts.append(
                    torch.stack([f.get_tensor("mean_NAM"), f.get_tensor("last_NAM")], 1).float().numpy()
                )
        self.P_N2AM = np.concatenate(parts)
        if len(self.P_N2AM) != len(self.rows):
            raise RuntimeError(f"poolings for {len(self.P_N2AM)} rows, {len(self.rows)} rows: extract first")
        self.sets = np.array([r.source for r in self.rows])
        self.split = np.array([split_of(r) for r in shared] + ["aug"] * len(aug))
        self.y = {
            t: np.array([-1 if r.labels[t] is None else r.labels[t] for r in self.rows]) for t in TARGETS
        }

    def features(self, layers: list[int], pool: str) -> np.ndarray:
        kinds = {"mean": [0], "last": [1], "mean+last": [0, 1]}[pool]
        return self.P_N2AM[:, kinds][:, :, layers].reshape(len(self.rows), -1)

    def weights(self, idx: np.ndarray, target: str, set_power: float) -> np.ndarray:
        return balance_weights([self.rows[i] for i in idx], self.y[target][idx], set_power)


def fit_logistic(x_NF, y_N, w_N, l2: float, steps: int = 200):
    """Weighted L2 logistic regression on standardised features; returns a raw-logit scoring function."""
    x = torch.from_numpy(x_NF)
    w = torch.from_numpy(w_N / w_N.mean()).float()
    y = torch.from_numpy(y_N).float()
    mu = (w[:, None] * x).sum(0) / w.sum()
    sd = ((w[:, None] * (x - mu) ** 2).sum(0) / w.sum()).sqrt().clamp(min=1e-6)
    z = (x - mu) / sd
    coef = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([coef, bias], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z @ coef + bias, y, reduction="none")
        loss = (w * bce).mean() + l2 * coef.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    coef, bias = coef.detach(), bias.detach()
    return lambda xs: (((torch.from_numpy(xs) - mu) / sd) @ coef + bias).numpy()


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def loso(tab: Table, X, cfg: dict, stack_types: bool = False) -> dict:
    """For every set: fit on the train split of the others (``cfg['drop']`` never), calibrate on their
    validation split, score all its rows. AP where it has both classes; TPR / FPR at the balanced threshold.
    ``stack_types``: the overall score is the max of the calibrated unsafe head and the four type heads."""
    y = tab.y["unsafe"]
    out = {}
    usable = ~np.isin(tab.sets, cfg["drop"])
    trainable = np.isin(tab.split, ("train", "aug")) & usable
    for fold in sorted(set(tab.sets[(tab.split != "aug") & (y >= 0)])):
        others = tab.sets != fold
        heads = ["unsafe", *TARGETS[1:]] if stack_types else ["unsafe"]
        va = np.flatnonzero((tab.split == "val") & others & usable & (y >= 0))
        te = np.flatnonzero((tab.sets == fold) & (y >= 0))
        p_va, p_te = [], []
        for t in heads:
            tr = np.flatnonzero(trainable & others & (tab.y[t] >= 0))
            if len(np.unique(tab.y[t][tr])) < 2:
                continue
            score = fit_logistic(X[tr], tab.y[t][tr], tab.weights(tr, t, cfg["set_power"]), cfg["l2"])
            cal = np.flatnonzero((tab.split == "val") & others & usable & (tab.y[t] >= 0))
            a, b = fit_platt(score(X[cal]), tab.y[t][cal], tab.weights(cal, t, 0.5))
            p_va.append(sigmoid(a * score(X[va]) + b))
            p_te.append(sigmoid(a * score(X[te]) + b))
        pv, pt = np.max(p_va, 0), np.max(p_te, 0)
        thr = balanced_threshold(pv, y[va], tab.weights(va, "unsafe", 0.5))
        yt = y[te]
        res = {"n": len(te), "pos": int(yt.sum())}
        if 0 < yt.sum() < len(yt):
            res["ap"] = float(average_precision_score(yt, pt))
        if (yt == 1).any():
            res["tpr"] = float((pt[yt == 1] >= thr).mean())
        if (yt == 0).any():
            res["fpr"] = float((pt[yt == 0] >= thr).mean())
        out[fold] = res
    aps = {s: r["ap"] for s, r in out.items() if "ap" in r}
    worst = min(aps, key=aps.get)
    return {"sets": out, "mean_ap": float(np.mean(list(aps.values()))), "worst": (worst, aps[worst])}


def grid(base: dict, which: str | None) -> list[dict]:
    if which == "layers":
        pools = [{**base, "layers": [6, 9, 12], "pool": p} for p in ("mean", "last")]
        layer_sets = ([4], [6], [8], [10], [12], [3, 6, 9, 12], [4, 6, 8, 10, 12], list(range(2, 13)))
        return pools + [{**base, "layers": ls, "pool": "mean+last"} for ls in layer_sets]
    if which == "l2":
        return [{**base, "l2": v} for v in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)]
    if which == "power":
        return [{**base, "set_power": v} for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    if which == "drop":
        return [base] + [{**base, "drop": (s,)} for s in NEW_SETS] + [{**base, "drop": NEW_SETS}]
    return [base]


def name_of(c: dict) -> str:
    drop = f" -{'/'.join(c['drop'])}" if c["drop"] else ""
    return f"L{','.join(map(str, c['layers']))} {c['pool']} l2={c['l2']} p={c['set_power']}{drop}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="6,9,12")
    ap.add_argument("--pool", default="mean+last", choices=("mean", "last", "mean+last"))
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--set-power", type=float, default=SplitConfig().set_power)
    ap.add_argument("--drop", default="", help="comma-separated sets left out of training everywhere")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--grid", choices=("layers", "l2", "power", "drop"), default=None)
    ap.add_argument("--stack-types", action="store_true", help="also the max over unsafe + type heads")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    tab = Table(augment=not args.no_augment)
    base = {"layers": [int(x) for x in args.layers.split(",")], "pool": args.pool, "l2": args.l2,
            "set_power": args.set_power, "drop": tuple(x for x in args.drop.split(",") if x)}  # fmt: skip
    results = []
    for c in grid(base, args.grid):
        for stack in (False, True) if args.stack_types else (False,):
            t0 = time.time()
            r = loso(tab, tab.features(c["layers"], c["pool"]), c, stack_types=stack)
            r["config"], r["name"] = c, name_of(c) + (" max(unsafe, types)" if stack else "")
            results.append(r)
            logger.info("%s: LOSO mean AP %.3f, worst %s %.3f (%.0f s)", r["name"], r["mean_ap"], *r["worst"],
                        time.time() - t0)  # fmt: skip
    tag = args.grid or ("stack" if args.stack_types else "one")
    (RUN_DIR / f"sweep_pooled.{tag}.json").write_text(json.dumps(results, indent=1))
    sets_ap = sorted({s for r in results for s, v in r["sets"].items() if "ap" in v})
    print("| config | " + " | ".join(sets_ap) + " | mean | worst |")
    print("|---|" + "---|" * (len(sets_ap) + 2))
    for r in results:
        cells = [f"{r['sets'][s]['ap']:.3f}" if s in r["sets"] else "-" for s in sets_ap]
        print(
            f"| {r['name']} | "
            + " | ".join(cells)
            + f" | **{r['mean_ap']:.3f}** | {r['worst'][0]} {r['worst'][1]:.3f} |"
        )


if __name__ == "__main__":
    main()
