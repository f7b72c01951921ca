"""Activation capture throughput: to memory vs to disk (fp32, bf16), on the embedded Gemma 3 270M.

"memory" runs exactly the capture loop (forward passes, row selection, dtype cast, concatenation
into shards) and keeps the shards in RAM; "disk" is ``capture()`` writing the same shards through
the writer thread (serialise, sha256, fsync, rename, manifest). The ratio disk / memory says how
much of the compute the disk writes cost; the target is >= 0.9. Runs are interleaved and the best
of ``--repeats`` kept, since this machine's speed drifts.

Threads: by default torch gets one core less than the machine has, leaving one to the writer thread.
With every core given to OpenMP, any other busy thread stalls its barriers (on the 2-core dev box
a 10 ms hash every 0.5 s doubled the forward time), which is what ``--threads 2`` shows there.

    .venv/bin/python bench/store.py --contexts 16 --context-length 128
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from g2interp import load_model
from g2interp.activations import CaptureConfig, capture, compute_shard, prepare_contexts
from g2interp.activations.capture import check_request

DEFAULT_CORPUS = str(Path(__file__).resolve().parents[1] / "data" / "demo_corpus")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=DEFAULT_CORPUS)
    parser.add_argument(
        "--hooks", default="blocks.3.hook_resid_post,blocks.6.hook_resid_post,blocks.6.attn.hook_z"
    )
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--contexts-per-shard", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch threads; default leaves one core to the writer thread (OpenMP slows badly when oversubscribed)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    model = load_model("gemma-3-270m", device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - started
    hooks = tuple(h for h in args.hooks.split(",") if h)

    def config(out: str, dtype: str) -> CaptureConfig:
        return CaptureConfig(
            data=args.data,
            hooks=hooks,
            out=out,
            context_length=args.context_length,
            max_contexts=args.contexts,
            batch_contexts=args.batch_size,
            eval_contexts=0,
            contexts_per_shard=args.contexts_per_shard,
            dtype=dtype,
            progress=False,
        )

    probe = config("unused", "float32")
    check_request(model, probe)
    contexts = prepare_contexts(model.tokenizer, probe)
    n_shards = len(contexts.shard_spans(args.contexts_per_shard))
    compute_shard(model, contexts, hooks, 0, probe)  # warm-up

    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            shards = [compute_shard(model, contexts, hooks, i, probe) for i in range(n_shards)]
            seconds = time.perf_counter() - t0
            rows = sum(s.rows.n_rows for s in shards)
            row = {"seconds": seconds, "tokens": contexts.n_tokens, "rows": rows, "bytes": 0}
            if "memory fp32" not in best or seconds < best["memory fp32"]["seconds"]:
                best["memory fp32"] = row
            del shards
            for dtype in ("float32", "bfloat16"):
                out = Path(tmp) / f"{dtype}-{repeat}"
                result = capture(model, config(str(out), dtype))
                name = f"disk {'fp32' if dtype == 'float32' else 'bf16'}"
                row = {
                    "seconds": result.loop_seconds,
                    "tokens": result.tokens_processed,
                    "rows": result.rows_written,
                    "bytes": result.bytes_written,
                    "setup": result.seconds - result.loop_seconds,
                }
                if name not in best or row["seconds"] < best[name]["seconds"]:
                    best[name] = row

    ref = best["memory fp32"]["tokens"] / best["memory fp32"]["seconds"]
    print(f"\nmodel load {load_s:.1f} s; {torch.get_num_threads()} threads; hooks {list(hooks)}")
    print(
        f"{len(contexts)} contexts x {args.context_length} tokens, {n_shards} shards, best of {args.repeats}\n"
    )
    header = f"{'mode':<12} {'tokens':>7} {'rows':>7} {'loop s':>7} {'tok/s':>8} {'vs memory':>9} {'bytes/token':>11}"
    print(header)
    print("-" * len(header))
    for name, row in best.items():
        tps = row["tokens"] / row["seconds"]
        per_token = f"{row['bytes'] / row['rows']:.0f}" if row["bytes"] else "-"
        print(
            f"{name:<12} {row['tokens']:>7} {row['rows']:>7} {row['seconds']:>7.2f} {tps:>8.0f} {tps / ref:>9.3f} "
            f"{per_token:>11}"
        )
    setups = [f"{n}: {r['setup']:.2f} s" for n, r in best.items() if "setup" in r]
    print(f"\nset-up outside the loop (fingerprints, packing, manifest): {', '.join(setups)}")
    print("bytes/token: all hooks' shard files per stored token (activations + token id, context, position)")


if __name__ == "__main__":
    main()
