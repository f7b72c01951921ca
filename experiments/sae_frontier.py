"""SAEs at the Gemma Scope 2 frontier on the embedded model: JumpReLU with a target L0, BatchTopK,
Matryoshka and a layer-6 transcoder, each trained by ``g2interp train-sae`` on one store, tabulated.

    python experiments/sae_frontier.py --out runs/sae_frontier        # captures the store if absent

A short caller of the CLI: one capture of ``blocks.6.hook_resid_post``, ``hook_mlp_in`` and
``hook_mlp_out`` (2,600 contexts of 128 tokens from ``data/demo_corpus``, 520 held out: 66k held-out
tokens), then one ``train-sae`` per design with d_sae 4096, target L0 40 and 780,000 training tokens,
each scored on every held-out token (L0, FVU, dead latents) and on ``--delta-loss-contexts`` contexts
with the model (Δ LM loss). The table goes to ``OUT/summary.md`` and ``summary.json``; re-running
resumes or reuses every stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from g2interp import cli
from g2interp.sae import JumpReLUSAE
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE, FINAL_SAE_DIR_TEMPLATE

log = logging.getLogger("sae_frontier")
REPO = Path(__file__).resolve().parents[1]
LAYER = 6
RESID, MLP_IN, MLP_OUT = (f"blocks.{LAYER}.{h}" for h in ("hook_resid_post", "hook_mlp_in", "hook_mlp_out"))
#: name -> (hook, extra train-sae flags)
DESIGNS = {
    "jumprelu": (RESID, []),
    "batchtopk": (RESID, ["--architecture", "batchtopk"]),
    "matryoshka": (RESID, ["--architecture", "matryoshka"]),
    "transcoder": (MLP_IN, ["--transcoder"]),
    "skip transcoder": (MLP_IN, ["--transcoder", "--affine-skip"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/sae_frontier")
    p.add_argument("--data", default=str(REPO / "data" / "demo_corpus"))
    p.add_argument("--designs", default=",".join(DESIGNS), help=f"comma-separated, of {list(DESIGNS)}")
    p.add_argument("--total-tokens", default="780000")
    p.add_argument("--delta-loss-contexts", default="16")
    p.add_argument("--threads", default="2")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out, store = Path(args.out), Path(args.out) / "store"
    common = ["--no-progress", "--threads", args.threads]
    capture = ["capture", "--data", args.data, "--context-length", "128", "--max-contexts", "2600"]
    capture += ["--eval-contexts", "520", "--hooks", RESID, MLP_IN, MLP_OUT, "--out", str(store)]
    if cli.main([*capture, *common]) != 0:
        raise SystemExit("capture failed")
    rows = []
    for name in args.designs.split(","):
        hook, flags = DESIGNS[name]
        folder = out / name.replace(" ", "_")
        argv = ["train-sae", "--store", str(store), "--hook", hook, "--out", str(folder), "--d-sae", "4096"]
        argv += ["--target-l0", "40", "--total-tokens", args.total_tokens]
        argv += ["--delta-loss-contexts", args.delta_loss_contexts, "--eval-batch-contexts", "4", *flags]
        started = time.perf_counter()
        if cli.main([*argv, *common]) != 0:
            raise SystemExit(f"train-sae failed for {name}")
        seconds = time.perf_counter() - started
        sae_dir = next(folder.glob(f"*/{FINAL_SAE_DIR_TEMPLATE.format(index=0)}"))
        ev = json.loads((sae_dir / EVAL_RESULTS_FILE).read_text())
        dl = json.loads((sae_dir / DELTA_LOSS_RESULTS_FILE).read_text())
        meta = JumpReLUSAE.load(sae_dir).cfg.metadata
        rows.append({"design": name, "hook": hook, "seconds": seconds, "train_dead": meta["dead_fraction"],
                     "tokens": meta["training_tokens"], **{k: ev[k] for k in ("l0", "fvu", "dead_fraction",
                     "dense_fraction", "n_tokens")}, **{k: dl[k] for k in ("ce_clean", "ce_sae", "ce_zero",
                     "delta_loss", "fraction_recovered", "n_contexts")}})  # fmt: skip
    header = "| design | hook | L0 | L0 / 40 | FVU | dead % (held out) | dense % | Δ loss (nats) | loss recovered |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    lines += [
        f"| {r['design']} | {r['hook']} | {r['l0']:.1f} | {r['l0'] / 40:.2f} | {r['fvu']:.3f} | "
        f"{100 * r['dead_fraction']:.1f} | {100 * r['dense_fraction']:.1f} | {r['delta_loss']:.3f} | "
        f"{r['fraction_recovered']:.3f} |"
        for r in rows
    ]
    notes = (f"\nheld out: {rows[0]['n_tokens']} tokens for L0/FVU/dead, {rows[0]['n_contexts']} contexts "
             f"for the loss (clean CE {rows[0]['ce_clean']:.3f}); {rows[0]['tokens']} training tokens each\n")  # fmt: skip
    (out / "summary.md").write_text("\n".join(lines) + "\n" + notes)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    log.info("\n%s", "\n".join(lines) + "\n" + notes)


if __name__ == "__main__":
    main()
