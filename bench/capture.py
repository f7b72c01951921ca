"""Benchmark: capture blocks.8.hook_resid_post (stop_at_layer=9) on the embedded Gemma 3 270M.

Compares g2interp against TransformerLens ``run_with_cache(names_filter, stop_at_layer=9)`` and
transformers ``output_hidden_states=True`` (full forward: transformers cannot stop early), all fp32
on the CPU in one process, on the same random tokens, and prints tokens/s, the ratio to
TransformerLens, and the FLOP floor (matmul FLOPs of 9 blocks / measured fp32 matmul rate).

    python bench/capture.py [--batch 8] [--seq 128] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

HOOK, LAYER = "blocks.8.hook_resid_post", 8


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = best_time(lambda: a @ b, repeats)
    return 2 * n**3 / t / 1e9


def capture_flops(cfg, batch: int, seq: int, n_blocks: int) -> float:
    """Matmul FLOPs of ``n_blocks`` blocks: projections, MLP, QK^T and PV (causal half counted fully)."""
    tokens = batch * seq
    proj = 2 * tokens * cfg.d_model * cfg.d_head * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    mlp = 2 * tokens * 3 * cfg.d_model * cfg.d_mlp
    attn = 2 * 2 * batch * cfg.n_heads * seq * seq * cfg.d_head
    return n_blocks * (proj + mlp + attn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from g2interp import load_model
    from g2interp.loading import embedded_model_path

    ours = load_model("gemma-3-270m", device="cpu", dtype=torch.float32)
    path = embedded_model_path()
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    del hf.config.quantization_config
    tl = HookedTransformer.from_pretrained_no_processing(
        "google/gemma-3-270m", hf_model=hf, tokenizer=tok, device="cpu", dtype=torch.float32
    )
    tokens = torch.randint(
        0, ours.cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    n_tokens = args.batch * args.seq

    with torch.no_grad():
        a = ours.run_with_cache(tokens, [HOOK], stop_at_layer=LAYER + 1).cache[HOOK]
        b = tl.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=LAYER + 1)[1][HOOK]
        c = hf(tokens, output_hidden_states=True).hidden_states[LAYER + 1]
    rel = lambda x, y: ((x - y).abs().max() / y.abs().max()).item()  # noqa: E731

    def run_ours():
        ours.run_with_cache(tokens, [HOOK], stop_at_layer=LAYER + 1)

    def run_tl():
        with torch.no_grad():
            tl.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=LAYER + 1)

    def run_hf():
        with torch.no_grad():
            hf(tokens, output_hidden_states=True)

    rows = [
        ("g2interp run_with_cache", best_time(run_ours, args.repeats), rel(a, c)),
        ("TransformerLens run_with_cache", best_time(run_tl, args.repeats), rel(b, c)),
        ("transformers output_hidden_states", best_time(run_hf, args.repeats), 0.0),
    ]
    gflops = matmul_gflops()
    floor = capture_flops(ours.cfg, args.batch, args.seq, LAYER + 1) / (gflops * 1e9)
    tl_time = rows[1][1]
    print(
        f"\ncapture {HOOK} (stop_at_layer={LAYER + 1}), batch {args.batch} x {args.seq}, fp32, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'implementation':36s} {'time (s)':>9s} {'tokens/s':>10s} {'vs TL':>7s} {'rel. diff vs HF':>16s}")
    for name, t, d in rows:
        print(f"{name:36s} {t:9.3f} {n_tokens / t:10.0f} {tl_time / t:6.2f}x {d:16.1e}")
    print(
        f"{'FLOP floor (matmul at ' + f'{gflops:.0f} GFLOP/s)':36s} {floor:9.3f} {n_tokens / floor:10.0f} "
        f"{tl_time / floor:6.2f}x"
    )


if __name__ == "__main__":
    main()
