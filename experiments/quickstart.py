"""A one-minute tour of the runtime: load the embedded Gemma 3 270M, capture activations by hook name
(stopping after the deepest block asked for), generate with the KV cache.

    python experiments/quickstart.py

The whole pipeline (store -> SAE -> dashboards -> moderation -> explorer) is ``make demo``
(``experiments/demo_pipeline.py``).
"""

from __future__ import annotations

import logging
import time

import torch

from g2interp import load_model

HOOKS = ["hook_embed", "blocks.5.attn.hook_z", "blocks.8.hook_mlp_out", "blocks.8.hook_resid_post"]
PROMPT = "The Eiffel Tower is located in"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("quickstart")
    t0 = time.perf_counter()
    model = load_model("gemma-3-270m")
    cfg = model.cfg
    log.info(
        "loaded the embedded Gemma 3 270M in %.1f s: %d layers, d_model %d, %s on %s",
        time.perf_counter() - t0,
        cfg.n_layers,
        cfg.d_model,
        str(model.dtype),
        model.device,
    )
    batch = model.tokenize(["The quick brown fox jumps over the lazy dog.", PROMPT])
    t0 = time.perf_counter()
    cache = model.capture(batch.tokens, HOOKS, attention_mask=batch.attention_mask)
    log.info(
        "captured %d hooks in %.2f s (stopped after block 8 of %d)",
        len(cache),
        time.perf_counter() - t0,
        cfg.n_layers,
    )
    print(f"\n{'hook':32s} {'shape':22s} {'mean |x|':>10s} {'max |x|':>10s}")
    for name in HOOKS:
        x = cache[name][batch.attention_mask.bool()]
        print(
            f"{name:32s} {tuple(cache[name].shape)!s:22s} {x.abs().mean().item():10.3f} {x.abs().max().item():10.1f}"
        )
    t0 = time.perf_counter()
    out = model.generate(PROMPT, max_new_tokens=24)
    n = len(out.new_tokens[0])
    print(f"\n{PROMPT!r} -> {out.texts[0]!r}")
    log.info("generated %d tokens in %.2f s (greedy, KV cache)", n, time.perf_counter() - t0)
    with torch.no_grad():
        logits = model(batch.tokens, batch.attention_mask)
    top = logits[1, batch.attention_mask[1].sum() - 1].topk(5)
    print("next-token top 5 after the prompt:", [model.tokenizer.decode([i]) for i in top.indices.tolist()])


if __name__ == "__main__":
    main()
