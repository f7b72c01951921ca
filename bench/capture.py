"""Benchmark: capture blocks.8.hook_resid_post (stop_at_layer=9) on the embedded Gemma 3 270M.

Compares g2interp against TransformerLens ``run_with_cache(names_filter, stop_at_layer=9)`` and
transformers ``output_hidden_states=True, logits_to_keep=1`` (all blocks: transformers cannot stop
early), on the same
random tokens in one process, and prints tokens/s, the ratio to TransformerLens and the share of the
shape-matched floor each reaches.

The floor is the arithmetic g2interp cannot avoid, timed alone: the blocks' matrix products on the
model's own weights with inputs of the shapes the model feeds them (through ``kernels.linear``, the
call the blocks make), and the attention kernel on the model's query/key/value shapes (SDPA, causal,
grouped-query), for the 9 blocks. Every row, the floor included, runs once per round, rounds
interleaved; the table shows medians. What separates g2interp from the floor is everything else:
norms, GeGLU, rotary embeddings, residual adds, copies and hook dispatch. The last row adds the
elementwise part of that (the blocks' norms, GELU, RoPE and residual adds, run alone on the model's
shapes) to the floor: what a forward pass that keeps transformers' arithmetic bit for bit cannot avoid.

    python bench/capture.py [--batch 8] [--seq 128] [--repeats 5] [--threads N] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import interleaved, loadavg, median, reference_models

HOOK, LAYER = "blocks.8.hook_resid_post", 8


def floor_fn(model, batch: int, seq: int, n_blocks: int):
    """A function running the blocks' products and attention kernels on the model's shapes."""
    from g2interp.model.kernels import linear

    cfg, device, dtype = model.cfg, model.device, model.dtype
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    x_BQM = randn(batch, seq, cfg.d_model)
    z_BQx = randn(batch, seq, cfg.n_heads * cfg.d_head)
    post_BQF = randn(batch, seq, cfg.d_mlp)
    # the layouts the blocks hand SDPA: [B, Q, heads, D] transposed to [B, heads, Q, D]
    q_BHQD = randn(batch, seq, cfg.n_heads, cfg.d_head).transpose(1, 2)
    k_BGKD = randn(batch, seq, cfg.n_kv_heads, cfg.d_head).transpose(1, 2)
    v_BGKD = randn(batch, seq, cfg.n_kv_heads, cfg.d_head).transpose(1, 2)
    scale = cfg.query_pre_attn_scalar**-0.5
    gqa = cfg.n_heads != cfg.n_kv_heads

    def run() -> None:
        with torch.no_grad():
            for block in model.blocks[:n_blocks]:
                linear(x_BQM, block.attn.qkv_proj.weight)
                F.scaled_dot_product_attention(
                    q_BHQD, k_BGKD, v_BGKD, is_causal=True, scale=scale, enable_gqa=gqa
                )
                linear(z_BQx, block.attn.o_proj.weight)
                linear(x_BQM, block.mlp.gate_up_proj.weight)
                linear(post_BQF, block.mlp.down_proj.weight)

    return run


def elementwise_fn(model, batch: int, seq: int, n_blocks: int):
    """A function running the blocks' elementwise arithmetic alone, on the model's shapes and modules.

    Per block: the four sandwich norms, the q/k head norms, RoPE on q and k, GeGLU's activation and
    product, the two residual adds: what transformers computes besides the products and attention,
    and what g2interp must compute the same way to keep its residual stream equal to transformers'.
    """
    from g2interp.model.layers import apply_rope

    cfg, device, dtype = model.cfg, model.device, model.dtype
    gen = torch.Generator(device=device).manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    x_BQM, gate_BQF, up_BQF = (
        randn(batch, seq, cfg.d_model),
        randn(batch, seq, cfg.d_mlp),
        randn(batch, seq, cfg.d_mlp),
    )
    q_BQHD, k_BQGD = randn(batch, seq, cfg.n_heads, cfg.d_head), randn(batch, seq, cfg.n_kv_heads, cfg.d_head)
    positions = torch.arange(seq, device=device).expand(batch, seq)
    cos, sin = model.rope_local(positions, dtype)

    def run() -> None:
        with torch.no_grad():
            for block in model.blocks[:n_blocks]:
                for norm in (block.ln1, block.ln1_post, block.ln2, block.ln2_post):
                    norm(x_BQM)
                if block.attn.q_norm is not None:
                    apply_rope(block.attn.q_norm(q_BQHD), cos, sin)
                    apply_rope(block.attn.k_norm(k_BQGD), cos, sin)
                F.gelu(gate_BQF, approximate="tanh") * up_BQF
                x_BQM + x_BQM
                x_BQM + x_BQM

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformer_lens import HookedTransformer

    from g2interp import load_model

    dtype = getattr(torch, args.dtype)
    ours = load_model("gemma-3-270m", device=args.device, dtype=dtype)
    if ours.cfg.attn_logit_softcap is not None:
        raise SystemExit("the floor times SDPA, which the blocks run only without an attention soft-cap")
    hf, tok = reference_models(args.device, dtype)
    tl = HookedTransformer.from_pretrained_no_processing(
        "google/gemma-3-270m", hf_model=hf, tokenizer=tok, device=args.device, dtype=dtype
    )
    tokens = torch.randint(
        0, ours.cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    n_tokens = args.batch * args.seq

    with torch.no_grad():
        a = ours.run_with_cache(tokens, [HOOK], stop_at_layer=LAYER + 1).cache[HOOK]
        b = tl.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=LAYER + 1)[1][HOOK]
        c = hf(tokens, output_hidden_states=True, logits_to_keep=1).hidden_states[LAYER + 1]
    rel = lambda x, y: ((x - y).abs().max() / y.abs().max()).item()  # noqa: E731

    def run_ours():
        ours.run_with_cache(tokens, [HOOK], stop_at_layer=LAYER + 1)

    def run_tl():
        with torch.no_grad():
            tl.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=LAYER + 1)

    def run_hf():
        with torch.no_grad():
            hf(tokens, output_hidden_states=True, logits_to_keep=1)

    floor_run = floor_fn(ours, args.batch, args.seq, LAYER + 1)
    elementwise_run = elementwise_fn(ours, args.batch, args.seq, LAYER + 1)

    def run_floor_and_elementwise():
        floor_run()
        elementwise_run()

    fns = {
        "g2interp run_with_cache": run_ours,
        "TransformerLens run_with_cache": run_tl,
        "transformers output_hidden_states": run_hf,
        "floor: products + attention kernel": floor_run,
        "floor + elementwise arithmetic": run_floor_and_elementwise,
    }
    times = {name: median(t) for name, t in interleaved(fns, args.repeats, args.device).items()}
    diffs = [rel(a.float(), c.float()), rel(b.float(), c.float()), 0.0, None, None]
    tl_time, floor = times["TransformerLens run_with_cache"], times["floor: products + attention kernel"]
    print(
        f"\ncapture {HOOK} (stop_at_layer={LAYER + 1}), batch {args.batch} x {args.seq}, {args.dtype} "
        f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(
        f"{'implementation':36s} {'time (s)':>9s} {'tokens/s':>10s} {'vs TL':>7s} {'of floor':>9s} "
        f"{'rel. diff vs HF':>16s}"
    )
    for (name, t), d in zip(times.items(), diffs, strict=True):
        print(
            f"{name:36s} {t:9.3f} {n_tokens / t:10.0f} {tl_time / t:6.2f}x {floor / t:8.1%} "
            f"{'' if d is None else f'{d:16.1e}'}"
        )
    print("(transformers runs all 18 blocks, as it cannot stop early, and unembeds the last position only)")
    extra = times["floor + elementwise arithmetic"] - floor
    print(
        f"the elementwise arithmetic (norms, GELU, RoPE, residual adds) timed alone adds {extra:.3f} s "
        f"({extra / floor:.1%} of the floor); g2interp spends {times['g2interp run_with_cache'] - floor:.3f} s "
        "beyond the floor"
    )
    print(loadavg())


if __name__ == "__main__":
    main()
