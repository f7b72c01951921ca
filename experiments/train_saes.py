"""Train JumpReLU SAEs for several layers and sites of a Gemma model, evaluate each, tabulate.

    python experiments/train_saes.py                                   # resid_post of every layer
    python experiments/train_saes.py --layers 3,6,9,12 --hooks 6:attn_z,6:mlp_out \\
        --tokens 196608 --epochs 3 --d-sae 4096 --target-l0 40 --out runs/saes

Hooks are captured together: one forward pass per batch of contexts (up to the deepest layer of the
group) fills the rows of every hook of a group, as many hooks per group as ``--max-memory-gb`` holds;
each SAE then trains on its hook's rows, replayed for ``--epochs`` passes in fresh orders. Every SAE is
scored on held-out contexts (``evaluate_sae``: L0, FVU, dead latents; ``delta_lm_loss``: next-token
loss with the SAE spliced in, against zero ablation) and the table goes to ``summary.md`` and
``summary.json`` in ``--out``. Each SAE's folder is ``OUT/<hook name>/sae_0``; re-running skips SAEs
already evaluated and resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

from g2interp import load_model
from g2interp.constants import EMBEDDED_MODEL, HOOK_MLP_OUT, HOOK_RESID_POST, HOOK_Z
from g2interp.sae import DeltaLossResult, JumpReLUSAE, SAETrainer, SAETrainingConfig, make_saes
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE
from g2interp.sae.data import ReplayBatches, capture_rows, hook_shape
from g2interp.sae.evaluate import next_token_loss
from g2interp.sae.run import (
    DEFAULT_CORPUS,
    contexts_for_rows,
    evaluate_on_contexts,
    excluded_ids,
    prepare_contexts,
)

log = logging.getLogger("train_saes")

SITES = {"resid_post": HOOK_RESID_POST, "attn_z": HOOK_Z, "mlp_out": HOOK_MLP_OUT}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=EMBEDDED_MODEL, help="model to load")
    p.add_argument("--layers", default="all", help="comma-separated layer indices, or 'all'")
    p.add_argument("--sites", default="resid_post", help=f"comma-separated, of {sorted(SITES)}")
    p.add_argument(
        "--hooks",
        default="",
        help="extra LAYER:SITE pairs, comma-separated (e.g. 6:attn_z,6:mlp_out), beside --layers x --sites",
    )
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="JSONL file or folder (field 'text')")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--tokens", type=int, default=400_000, help="tokens each SAE trains on (repeats counted)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the captured tokens")
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr-warmup-steps", type=int, default=20)
    p.add_argument(
        "--target-l0", type=float, default=40.0, help="0: fixed λ (--l0-coefficient) after warm-up"
    )
    p.add_argument("--l0-coefficient", type=float, default=1e-3, help="λ (its start when --target-l0 > 0)")
    p.add_argument(
        "--threshold-lr-scale", type=float, default=3.0, help="log-threshold lr / lr (Gemma Scope: 1)"
    )
    p.add_argument("--l0-warmup-steps", type=int, default=0, help="λ warm-up (fixed-λ runs only)")
    p.add_argument("--eval-contexts", type=int, default=64, help="held-out contexts (L0, FVU, dead latents)")
    p.add_argument("--delta-loss-contexts", type=int, default=4, help="of those, scored with the whole model")
    p.add_argument("--batch-contexts", type=int, default=16, help="contexts per forward pass")
    p.add_argument("--max-memory-gb", type=float, default=3.0, help="captured rows held at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/saes")
    return p.parse_args()


def hook_groups(hooks: list[dict], n_rows: int, budget_bytes: float) -> list[list[dict]]:
    """Consecutive hooks (in layer order) whose float32 rows fit the budget together."""
    groups: list[list[dict]] = []
    used = math.inf
    for hook in sorted(hooks, key=lambda h: (h["layer"], h["site"])):
        size = n_rows * hook["d_in"] * 4
        if used + size > budget_bytes:
            groups.append([])
            used = 0
        groups[-1].append(hook)
        used += size
    return groups


def training_config(args: argparse.Namespace, hook: dict) -> SAETrainingConfig:
    return SAETrainingConfig(
        d_in=hook["d_in"],
        d_sae=args.d_sae,
        total_tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_warmup_steps=args.lr_warmup_steps,
        l0_coefficient=args.l0_coefficient,
        l0_warmup_steps=args.l0_warmup_steps,
        target_l0=args.target_l0,
        threshold_lr_scale=args.threshold_lr_scale,
        b_dec_init="mean",
        n_norm_batches=4,
        dead_window_steps=100,
        checkpoint_every=100,
        log_every=50,
        seed=args.seed,
        hook_name=hook["name"],
        model_name=args.source,
        reshape_hook_z=hook["reshape_hook_z"],
    )


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    model = load_model(args.source)
    layers = (
        range(model.cfg.n_layers) if args.layers == "all" else [int(x) for x in args.layers.split(",") if x]
    )
    pairs = [(layer, site) for layer in layers for site in args.sites.split(",") if site]
    pairs += [(int(pair.split(":")[0]), pair.split(":")[1]) for pair in args.hooks.split(",") if pair]
    hooks = []
    for layer, site in dict.fromkeys(pairs):
        if site not in SITES:
            raise SystemExit(f"unknown site {site!r}; choose from {sorted(SITES)}")
        name = SITES[site].format(layer=layer)
        shape = hook_shape(model, name)
        hooks.append(
            dict(layer=layer, site=site, name=name, d_in=math.prod(shape), reshape_hook_z=len(shape) == 2)
        )
    exclude = excluded_ids(model.tokenizer)
    split = prepare_contexts(
        model.tokenizer,
        args.corpus,
        context_length=args.context_length,
        eval_contexts=args.eval_contexts,
        seed=args.seed,
    )
    steps = args.tokens // args.batch_size
    n_rows = math.ceil(steps / args.epochs) * args.batch_size
    contexts = contexts_for_rows(split.train, n_rows, exclude)
    scored = split.eval[: args.delta_loss_contexts]
    ce_clean = next_token_loss(model, scored, batch_size=1)
    log.info(
        "%d SAEs; %d unique rows each from %d contexts; clean CE %.4f",
        len(hooks),
        n_rows,
        len(contexts),
        ce_clean,
    )

    rows_out = []
    for group in hook_groups(hooks, n_rows, args.max_memory_gb * 2**30):
        todo = [h for h in group if not (out / h["name"] / "sae_0" / DELTA_LOSS_RESULTS_FILE).is_file()]
        captured, capture_s = {}, 0.0
        if todo:
            t0 = time.perf_counter()
            captured = capture_rows(
                model,
                contexts,
                [h["name"] for h in todo],
                n_rows,
                batch_contexts=args.batch_contexts,
                exclude_ids=exclude,
            )
            capture_s = time.perf_counter() - t0
            log.info("captured %s in %.1f s", [h["name"] for h in todo], capture_s)
        for hook in group:
            folder = out / hook["name"]
            train_s = eval_s = 0.0
            if hook in todo:
                cfg = training_config(args, hook)
                t0 = time.perf_counter()
                batches = ReplayBatches(captured.pop(hook["name"]), args.batch_size, seed=args.seed)
                sae = SAETrainer(
                    cfg,
                    make_saes(cfg),
                    batches,
                    checkpoint_dir=folder,
                    metrics_log=folder / "metrics.jsonl",
                    progress=False,
                ).fit()[0]
                del batches
                train_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                result, delta = evaluate_on_contexts(
                    model,
                    sae,
                    split.eval,
                    exclude_ids=exclude,
                    batch_contexts=args.batch_contexts,
                    delta_loss_contexts=args.delta_loss_contexts,
                    ce_clean=ce_clean,
                )
                result.save(folder / "sae_0")
                delta.save(folder / "sae_0")
                eval_s = time.perf_counter() - t0
            sae_dir = folder / "sae_0"
            ev = json.loads((sae_dir / EVAL_RESULTS_FILE).read_text())
            delta = DeltaLossResult(**json.loads((sae_dir / DELTA_LOSS_RESULTS_FILE).read_text()))
            meta = JumpReLUSAE.load(sae_dir).cfg.metadata
            row = dict(
                layer=hook["layer"],
                site=hook["site"],
                hook_name=hook["name"],
                d_in=hook["d_in"],
                d_sae=args.d_sae,
                l0=ev["l0"],
                fvu=ev["fvu"],
                delta_loss=delta.delta_loss,
                fraction_recovered=delta.fraction_recovered,
                dead_pct=100 * ev["dead_fraction"],
                train_dead_pct=100 * meta["dead_fraction"],
                l0_coefficient=meta["l0_coefficient"],
                tokens_trained=meta["training_tokens"],
                eval_tokens=ev["n_tokens"],
                capture_s=round(capture_s / max(1, len(todo)), 1) if hook in todo else 0.0,
                train_s=round(train_s, 1),
                eval_s=round(eval_s, 1),
            )
            rows_out.append(row)
            log.info("%s", row)

    header = "| layer | site | d_in | d_sae | L0 | FVU | Δ loss (nats) | loss recovered | dead % (eval) | dead % (train window) | λ end |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows_out:
        lines.append(
            f"| {r['layer']} | {r['site']} | {r['d_in']} | {r['d_sae']} | {r['l0']:.1f} | {r['fvu']:.3f} | "
            f"{r['delta_loss']:.3f} | {r['fraction_recovered']:.3f} | {r['dead_pct']:.1f} | "
            f"{r['train_dead_pct']:.1f} | {r['l0_coefficient']:.2g} |"
        )
    total_s = time.perf_counter() - start
    notes = (
        f"\n{len(rows_out)} SAEs, {args.tokens} training tokens each ({n_rows} unique x {args.epochs} epochs, "
        f"context {args.context_length}); held out: {args.eval_contexts} contexts for L0/FVU/dead, the first "
        f"{args.delta_loss_contexts} of them for the loss (clean CE {ce_clean:.4f}); wall time "
        f"{total_s / 60:.1f} min, {torch.get_num_threads()} threads\n"
    )
    table = "\n".join(lines) + "\n" + notes
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(table)
    summary = {"args": vars(args), "ce_clean": ce_clean, "wall_s": total_s, "saes": rows_out}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
