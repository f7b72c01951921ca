"""Tables from the runs of ``loso.py``: per design (and blends of designs), leave-one-set-out AP per set
(mean, worst), in-distribution test AP per set, ECE, and TPR / FPR at the balanced threshold per set.

    python experiments/moderation/report.py attention pooled lexical tfidf "attention+pooled^0.5+lexical^0.5"
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from common import LOSO_DIR, RUN_DIR, read_all
from sklearn.metrics import average_precision_score

from g2interp.moderation.fit import balanced_threshold, fit_platt
from g2interp.moderation.recipe import balance_weights


def parse(spec: str) -> tuple[list[str], list[float]]:
    """``a+b^0.5+c^0.5``: runs (``loso.py`` file stems, ``:`` written ``@``) and their blend weights."""
    names, weights = [], []
    for item in spec.split("+"):
        name, _, w = item.partition("^")
        names.append(name.replace(":", "@"))
        weights.append(float(w) if w else 1.0)
    return names, weights


def ece(p, y, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    k = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    return float(
        sum(abs(p[k == b].mean() - y[k == b].mean()) * (k == b).mean() for b in range(bins) if (k == b).any())
    )


def combined(runs, names, weights, key, part, val_key):
    """Blend raw = sum of weight * member raw / member's std on the validation rows."""
    total = 0.0
    for n, w in zip(names, weights, strict=True):
        std = runs[n][f"{val_key}:val_raw"].std() + 1e-9
        total = total + w * runs[n][f"{key}:{part}_raw"] / std
    return total


def evaluate(spec: str, rows, target: str = "unsafe") -> dict:
    names, weights = parse(spec)
    suffix = "" if target == "unsafe" else f".{target}"
    runs = {n: dict(np.load(LOSO_DIR / f"{n}{suffix}.npz")) for n in names}
    base = runs[names[0]]
    y, sets = base["y"], base["sets"]
    table_rows = [r for r in rows if r.labels[target] is not None]
    out = {"design": spec, "loso": {}, "indist": {}}
    for key in ["indist", *sorted({k.split(":")[1] for k in base if k.startswith("fold:")})]:
        fk = key if key == "indist" else f"fold:{key}"
        if not all(f"{fk}:test_raw" in r for r in runs.values()):
            continue
        vi, ti = base[f"{fk}:val_idx"], base[f"{fk}:test_idx"]
        raw_v = combined(runs, names, weights, fk, "val", fk)
        raw_t = combined(runs, names, weights, fk, "test", fk)
        wv = balance_weights([table_rows[i] for i in vi], y[vi])
        a, b = fit_platt(raw_v, y[vi], wv)
        pv = 1 / (1 + np.exp(-(a * raw_v + b)))
        thr = balanced_threshold(pv, y[vi], wv)
        pt = 1 / (1 + np.exp(-(a * raw_t + b)))
        groups = (
            {key: np.ones(len(ti), bool)}
            if key != "indist"
            else {s: sets[ti] == s for s in np.unique(sets[ti])}
        )
        for s, m in groups.items():
            yt, ps = y[ti][m], pt[m]
            res = {"n": int(m.sum()), "pos": int(yt.sum())}
            if 0 < yt.sum() < len(yt):
                res["ap"] = float(average_precision_score(yt, ps))
            if (yt == 1).any():
                res["tpr"] = float((ps[yt == 1] >= thr).mean())
            if (yt == 0).any():
                res["fpr"] = float((ps[yt == 0] >= thr).mean())
            out["loso" if key != "indist" else "indist"][s] = res
        if key == "indist":
            out["indist_ece"] = ece(pt, y[ti])
            out["indist_pooled_ap"] = float(average_precision_score(y[ti], pt))
    aps = {s: r["ap"] for s, r in out["loso"].items() if "ap" in r}
    if aps:
        out["loso_mean_ap"] = float(np.mean(list(aps.values())))
        out["loso_worst"] = min(aps.items(), key=lambda kv: kv[1])
    return out


def markdown(results: list[dict]) -> str:
    sets = sorted({s for r in results for s in r["loso"]})
    lines = ["| set | " + " | ".join(r["design"] for r in results) + " |", "|---|" + "---|" * len(results)]
    for s in sets:
        cells = []
        for r in results:
            x = r["loso"].get(s, {})
            cell = f"{x['ap']:.3f}" if "ap" in x else "-"
            if "tpr" in x and "ap" not in x:
                cell = f"TPR {x['tpr']:.2f}"
            elif "fpr" in x and "ap" not in x:
                cell = f"FPR {x['fpr']:.2f}"
            cells.append(cell)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append(
        "| **LOSO mean AP** | "
        + " | ".join(f"**{r.get('loso_mean_ap', float('nan')):.3f}**" for r in results)
        + " |"
    )
    lines.append(
        "| worst | "
        + " | ".join(
            f"{r['loso_worst'][0]} {r['loso_worst'][1]:.3f}" if "loso_worst" in r else "-" for r in results
        )
        + " |"
    )
    lines.append(
        "| in-dist test AP (pooled) | "
        + " | ".join(f"{r.get('indist_pooled_ap', float('nan')):.3f}" for r in results)
        + " |"
    )
    lines.append(
        "| in-dist ECE | " + " | ".join(f"{r.get('indist_ece', float('nan')):.3f}" for r in results) + " |"
    )
    return "\n".join(lines)


STAT_FORMATS = {"ap": "{:.3f}", "tpr": "{:.2f}", "fpr": "{:.2f}"}


def stat_cells(stats: dict, keys: tuple[str, ...]) -> list[str]:
    """One table cell per key: the formatted statistic, or ``-`` where the set has none."""
    return [STAT_FORMATS[k].format(stats[k]) if k in stats else "-" for k in keys]


def markdown_indist(results: list[dict]) -> str:
    """In-distribution test split: AP per set, and TPR / FPR at the balanced threshold, per design."""
    sets = sorted({s for r in results for s in r["indist"]})
    head = " | ".join(f"{r['design']} AP | TPR | FPR" for r in results)
    lines = [f"| set | n | pos | {head} |", "|---|---|---|" + "---|---|---|" * len(results)]
    for s in sets:
        first = next(r["indist"][s] for r in results if s in r["indist"])
        cells = []
        for r in results:
            cells += stat_cells(r["indist"].get(s, {}), ("ap", "tpr", "fpr"))
        lines.append(f"| {s} | {first['n']} | {first['pos']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_rates(results: list[dict]) -> str:
    """Leave-one-set-out TPR / FPR at the threshold chosen on the other sets' validation, per design."""
    sets = sorted({s for r in results for s in r["loso"]})
    lines = ["| set | " + " | ".join(f"{r['design']} TPR | FPR" for r in results) + " |",
             "|---|" + "---|---|" * len(results)]  # fmt: skip
    for s in sets:
        cells = []
        for r in results:
            cells += stat_cells(r["loso"].get(s, {}), ("tpr", "fpr"))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def havoc_breakdown(spec: str, rows) -> str:
    """havoc held out: AP of each of its harm categories (positives rated ``intent`` there, against all
    negatives), and where its ``topical`` hard negatives rank among the negatives."""
    names, weights = parse(spec)
    runs = {n: dict(np.load(LOSO_DIR / f"{n}.npz")) for n in names}
    base = runs[names[0]]
    y, ti = base["y"], base["fold:havoc:test_idx"]
    raw = combined(runs, names, weights, "fold:havoc", "test", "fold:havoc")
    table_rows = [r for r in rows if r.labels["unsafe"] is not None]  # what the runs' indices point into
    labels = [table_rows[i].extra["orig_label"] for i in ti]
    yt, neg = y[ti], y[ti] == 0
    lines = [f"havoc held out, {spec}: AP {average_precision_score(yt, raw):.3f} ({int(yt.sum())} of {len(yt)})",
             "| category | positives (intent) | AP vs all negatives | base rate | topical negatives | "
             "their mean rank among negatives |", "|---|---|---|---|---|---|"]  # fmt: skip
    for cat in ("sexual", "hate_violence", "illegal", "self_inflicted", "ideological"):
        pos = np.array([lab[cat] == "intent" for lab in labels]) & (yt == 1)
        top = np.array([lab[cat] == "topical" for lab in labels]) & neg
        m = pos | neg
        ap = f"{average_precision_score(pos[m], raw[m]):.3f}" if pos.any() else "-"
        rank = (raw[top][:, None] > raw[neg][None]).mean() if top.any() else float("nan")
        lines.append(
            f"| {cat} | {int(pos.sum())} | {ap} | {pos.sum() / m.sum():.3f} | {int(top.sum())} | {rank:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("designs", nargs="+")
    ap.add_argument("--target", default="unsafe")
    ap.add_argument("--havoc", action="store_true", help="also break havoc's LOSO AP down by its categories")
    args = ap.parse_args()
    rows = read_all()
    results = [evaluate(d, rows, args.target) for d in args.designs]
    (RUN_DIR / f"report.{args.target}.json").write_text(json.dumps(results, indent=1))
    tables = [markdown(results), markdown_rates(results), markdown_indist(results)]
    if args.havoc:
        tables += [havoc_breakdown(d, rows) for d in args.designs]
    sys.stdout.write("\n\n".join(t for t in tables if t.count("\n") > 1) + "\n")


if __name__ == "__main__":
    main()
