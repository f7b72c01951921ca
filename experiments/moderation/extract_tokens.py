"""Cache token activations of every shared labelled set for probe experiments.

For each row: the ShieldGemma template (prompt, or response for rows of kind ``response``) with each user
text cut to ``--max-text-tokens`` (first and last halves), one text-part forward on the embedded Gemma 3
270M, and ``hook_resid_post`` of ``--layers`` kept, in bf16, over the classified text's tokens plus the
text part's last token (the ``*`` before the policy); for every block up to the deepest, the mean over the
classified tokens and the last token (``mean_NAM``, ``last_NAM``: small, for layer sweeps). Written per set in chunks
(``runs/moderation/tokens/<set>.<k>.safetensors``) so an interrupted run resumes.

    python experiments/moderation/extract_tokens.py [--sets havoc xstest] [--layers 6 9 12]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from common import DATA_DIR, TOKENS_DIR, encode_rows, write_atomic
from safetensors.torch import save_file
from tqdm import tqdm

from g2interp.constants import HOOK_RESID_POST
from g2interp.loading import load_model
from g2interp.moderation.datasets import labelled_sets, read_jsonl
from g2interp.moderation.runner import PrefixRunner, length_buckets
from g2interp.moderation.template import TemplateEncoder

logger = logging.getLogger("extract_tokens")
CHUNK = 2048


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="*", default=None)
    ap.add_argument("--layers", nargs="+", type=int, default=[6, 9, 12])
    ap.add_argument("--max-text-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--jsonl", default=None, help="extract this file instead of shared sets (rows keep their source)"
    )
    ap.add_argument("--name", default=None, help="file stem for --jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    model = load_model(dtype=torch.float32)
    encoder = TemplateEncoder(model.tokenizer, args.max_text_tokens, "truncate")
    logging.getLogger("g2interp.moderation.template").setLevel(logging.ERROR)
    runner = PrefixRunner(model)
    layers = sorted(args.layers)
    all_layers = list(range(layers[-1] + 1))
    all_hooks = [HOOK_RESID_POST.format(layer=x) for x in all_layers]
    TOKENS_DIR.mkdir(parents=True, exist_ok=True)
    jobs = (
        [(args.name, args.jsonl)] if args.jsonl else [(n, None) for n in args.sets or labelled_sets(DATA_DIR)]
    )
    for name, jsonl in jobs:
        rows = read_jsonl(jsonl) if jsonl else read_jsonl(DATA_DIR / name, source=name)
        for k, start in enumerate(range(0, len(rows), CHUNK)):
            path = TOKENS_DIR / f"{name}.{k}.safetensors"
            if path.exists():
                continue
            chunk = rows[start : start + CHUNK]
            encoded = encode_rows(encoder, chunk)
            spans = [e.pool.end - e.pool.start for e in encoded]
            acts = torch.empty(sum(spans), len(layers), model.cfg.d_model, dtype=torch.bfloat16)
            last = torch.empty(len(chunk), len(layers), model.cfg.d_model, dtype=torch.bfloat16)
            mean_all = torch.empty(len(chunk), len(all_layers), model.cfg.d_model, dtype=torch.bfloat16)
            last_all = torch.empty(len(chunk), len(all_layers), model.cfg.d_model, dtype=torch.bfloat16)
            offsets = torch.tensor([0, *spans]).cumsum(0)
            t0, n_tok = time.time(), 0
            buckets = list(length_buckets(encoded, args.batch_size, 4096))
            for idx in tqdm(buckets, desc=f"{name}.{k}", mininterval=30):
                batch = [encoded[i] for i in idx]
                run = runner.run(batch, hooks=all_hooks, stop_at_layer=layers[-1] + 1)
                n_tok += int(run.lengths_B.sum())
                every_BTAM = torch.stack([run.acts[h] for h in all_hooks], 2)
                stack_BTLM = every_BTAM[:, :, layers].to(torch.bfloat16)
                for b, i in enumerate(idx):
                    e = encoded[i]
                    s0 = e.pool.start - e.n_shared
                    acts[offsets[i] : offsets[i + 1]] = stack_BTLM[b, s0 : s0 + spans[i]]
                    last[i] = stack_BTLM[b, int(run.lengths_B[b]) - 1]
                    mean_all[i] = every_BTAM[b, s0 : s0 + spans[i]].mean(0).to(torch.bfloat16)
                    last_all[i] = every_BTAM[b, int(run.lengths_B[b]) - 1].to(torch.bfloat16)
            meta = {
                "layers": ",".join(map(str, layers)),
                "max_text_tokens": str(args.max_text_tokens),
                "rows": f"{start}:{start + len(chunk)}",
            }
            tensors = {"acts_TLM": acts, "last_NLM": last, "offsets": offsets,
                       "mean_NAM": mean_all, "last_NAM": last_all}  # fmt: skip
            write_atomic(path, lambda p, t=tensors, m=meta: save_file(t, str(p), m))
            dt = time.time() - t0
            logger.info(
                "%s: %d rows, %d text-part tokens in %.0f s (%.0f tok/s)",
                path.name,
                len(chunk),
                n_tok,
                dt,
                n_tok / dt,
            )


if __name__ == "__main__":
    main()
