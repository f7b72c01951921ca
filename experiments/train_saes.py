"""Train JumpReLU SAEs for several layers and sites of a Gemma model from one store, evaluate each, tabulate.

    python experiments/train_saes.py                                   # resid_post of every layer
    python experiments/train_saes.py --layers 3,6,9,12 --hooks 6:attn_z,6:mlp_out \\
        --tokens 786432 --epochs 3 --d-sae 4096 --target-l0 40 --out runs/saes

A short caller of the library: one capture of every hook into ``OUT/store`` (``tokens / epochs`` training
rows per hook plus ``--eval-contexts`` held out), then ``train_saes`` with the ``short-run`` recipe trains
every SAE from one stream of the store's batches and scores each on the held-out contexts. The table
goes to ``summary.md`` and ``summary.json`` in ``--out``; re-running resumes or reuses every stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

from g2interp import ActivationStore, CaptureConfig, capture, load_model, plan_saes, train_saes
from g2interp.constants import EMBEDDED_MODEL, HOOK_MLP_OUT, HOOK_RESID_POST, HOOK_Z
from g2interp.dashboards import parse_hook
from g2interp.sae import EvalConfig

log = logging.getLogger("train_saes")
REPO = Path(__file__).resolve().parents[1]
SITES = {"resid_post": HOOK_RESID_POST, "attn_z": HOOK_Z, "mlp_out": HOOK_MLP_OUT}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=EMBEDDED_MODEL, help="model to load")
    p.add_argument("--layers", default="all", help="comma-separated layer indices, or 'all'")
    p.add_argument("--sites", default="resid_post", help=f"comma-separated, of {sorted(SITES)}")
    p.add_argument(
        "--hooks", default="", help="extra LAYER:SITE pairs, comma-separated (e.g. 6:attn_z,6:mlp_out)"
    )
    p.add_argument("--data", default=str(REPO / "data" / "demo_corpus"), help="corpus file or folder")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--tokens", type=int, default=400_000, help="tokens each SAE trains on (repeats counted)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the captured tokens")
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--target-l0", type=float, default=40.0, help="0: fixed λ (--l0-coefficient)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-contexts", type=int, default=64, help="held-out contexts (L0, FVU, dead latents)")
    p.add_argument("--delta-loss-contexts", type=int, default=4, help="of those, scored with the whole model")
    p.add_argument("--batch-contexts", type=int, default=16, help="contexts per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/saes")
    return p.parse_args()


def hook_names(args: argparse.Namespace, n_layers: int) -> list[str]:
    layers = range(n_layers) if args.layers == "all" else [int(x) for x in args.layers.split(",") if x]
    pairs = [(layer, site) for layer in layers for site in args.sites.split(",") if site]
    pairs += [(int(pair.split(":")[0]), pair.split(":")[1]) for pair in args.hooks.split(",") if pair]
    unknown = sorted({site for _, site in pairs} - set(SITES))
    if unknown:
        raise SystemExit(f"unknown sites {unknown}; choose from {sorted(SITES)}")
    return [SITES[site].format(layer=layer) for layer, site in dict.fromkeys(pairs)]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    model = load_model(args.model)
    hooks = hook_names(args, model.cfg.n_layers)
    train_contexts = math.ceil(args.tokens / args.epochs / (args.context_length - 1))
    cfg = CaptureConfig(
        data=args.data,
        hooks=tuple(hooks),
        out=str(out / "store"),
        model=args.model,
        context_length=args.context_length,
        max_contexts=train_contexts + args.eval_contexts,
        eval_contexts=args.eval_contexts,
        batch_contexts=args.batch_contexts,
        seed=args.seed,
    )
    capture(model, cfg)
    capture_s = time.perf_counter() - start
    store = ActivationStore(out / "store")
    specs = plan_saes(store, hooks, "short-run", d_sae=[args.d_sae], target_l0=[args.target_l0],
                      total_tokens=args.tokens, lr=args.lr, init_seed=args.seed)  # fmt: skip
    eval_cfg = EvalConfig(delta_loss_contexts=args.delta_loss_contexts)
    results = train_saes(
        store, specs, out / "saes", model=model, eval_cfg=eval_cfg, seed=args.seed, progress=False
    )

    rows = [
        {**r.summary(), **dict(zip(("layer", "site"), parse_hook(r.spec.hook), strict=True))} for r in results
    ]
    header = "| layer | site | d_in | d_sae | L0 | FVU | Δ loss (nats) | loss recovered | dead % (eval) | dead % (train window) | λ end |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    lines += [
        f"| {r['layer']} | {r['site']} | {r['d_in']} | {r['d_sae']} | {r['l0']:.1f} | {r['fvu']:.3f} | "
        f"{r['delta_loss']:.3f} | {r['fraction_recovered']:.3f} | {100 * r['dead_fraction']:.1f} | "
        f"{100 * r['train_dead_fraction']:.1f} | {r['l0_coefficient']:.2g} |"
        for r in sorted(rows, key=lambda r: (r["layer"], r["site"]))
    ]
    total_s = time.perf_counter() - start
    notes = (
        f"\n{len(rows)} SAEs, {args.tokens} training tokens each ({store.n_rows('train')} distinct x "
        f"{args.epochs} epochs, context {args.context_length}); held out: {store.contexts().n_eval} contexts "
        f"for L0/FVU/dead, the first {args.delta_loss_contexts} of them for the loss; wall time "
        f"{total_s / 60:.1f} min (capture {capture_s:.0f} s), {torch.get_num_threads()} threads\n"
    )
    table = "\n".join(lines) + "\n" + notes
    (out / "summary.md").write_text(table)
    summary = {"args": vars(args), "wall_s": total_s, "capture_s": capture_s, "saes": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("\n%s", table)


if __name__ == "__main__":
    main()
