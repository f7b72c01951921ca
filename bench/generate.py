"""Benchmark: greedy generation on the embedded Gemma 3 270M against transformers' ``generate``.

Both decode the same left-padded prompts (batch 1 and 4 by default), greedily, ``--new-tokens`` new
tokens each with no stop at EOS, in one process with the rounds interleaved (g2interp, transformers,
g2interp, ...), and print tokens/s, the ratio to transformers, whether the continuations are equal
token for token, and each decode step against the memory-bandwidth floor: the bytes of the model's
weights (every block's weights and the unembedding, once each, fp32) divided by the copy bandwidth
measured in the same run (STREAM's count: bytes read + written per second). A decode step is
``(time for N tokens - time for 1 token) / (N - 1)``: the prompt's forward pass is left out.
``g2interp full logits`` is g2interp with ``screen_greedy = False``: every logit computed, as
sampling needs; plain ``g2interp`` takes greedy's argmax through the fp16 screen of the unembedding
(``g2interp.model.screen``), which reads the unembedding's bytes half as often as the fp32 weights
count them; the floor of the bytes it reads is printed too.

A second table times each kernel a product of a decode step can run on (``F.linear``, ``W @ x.T``,
oneDNN on a reordered copy of the weight, and the fp16 screen for greedy's unembedding), on all 18
blocks' weights in turn (so the weights stream from memory as in a step), at the benchmark's batch
sizes; ``*`` marks the one g2interp runs.

    python bench/generate.py [--new-tokens 48] [--batches 1 4] [--repeats 3] [--threads N]
                             [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import copy_bandwidth, interleaved, loadavg, median, reference_models

PROMPTS = [
    "The history of the printing press begins",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""',
    "Photosynthesis is the process by which",
    "Once upon a time, in a small village by the sea, there lived",
]


def step_bytes(model) -> int:
    """Weight bytes one decode step reads: every parameter once (the tied embedding is the unembedding)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


KERNELS = ("F.linear", "W @ x.T", "oneDNN packed", "fp16 screen")


def kernel_rows(model, batches: list[int], repeats: int) -> list[tuple[str, int, dict[str, float], str]]:
    """(product, rows, seconds per kernel, the kernel g2interp runs) for each product of a decode step.

    The blocks' products run through ``F.linear``, ``W @ x.T`` and oneDNN on reordered weights; the
    unembedding through the first two and, for greedy decoding, the fp16 screen.
    """
    from g2interp.model.kernels import as_w_xt, packable, w_xt

    blocks = {
        "attn.qkv_proj": [b.attn.qkv_proj for b in model.blocks],
        "attn.o_proj": [b.attn.o_proj for b in model.blocks],
        "mlp.gate_up_proj": [b.mlp.gate_up_proj for b in model.blocks],
        "mlp.down_proj": [b.mlp.down_proj for b in model.blocks],
    }
    screen = model.greedy_screen()  # the one the timed generations built
    out = []
    with torch.no_grad():
        for name, weights in [
            *((n, [m.weight for m in ms]) for n, ms in blocks.items()),
            ("unembedding", [model.W_U]),
        ]:
            for rows in batches:
                x_NK = torch.randn(rows, weights[0].shape[1], device=model.device, dtype=model.dtype)
                fns = {
                    "F.linear": lambda x_NK=x_NK, ws=weights: [F.linear(x_NK, w) for w in ws],
                    "W @ x.T": lambda x_NK=x_NK, ws=weights: [w_xt(x_NK, w) for w in ws],
                }
                if name in blocks and packable(x_NK, weights[0]):
                    packed = [m.packed_weight() for m in blocks[name]]  # those the timed generations built
                    fns["oneDNN packed"] = lambda x_NK=x_NK, ps=packed: [
                        torch.ops.mkldnn._linear_pointwise(x_NK, p, None, "none", [], "") for p in ps
                    ]
                if name == "unembedding" and screen is not None:
                    fns["fp16 screen"] = lambda x_NK=x_NK: screen.screen(x_NK)
                times = {k: median(v) for k, v in interleaved(fns, repeats, model.device).items()}
                if name in blocks and "oneDNN packed" in fns and model.pack_decode_weights:
                    runs = "oneDNN packed"
                elif name == "unembedding" and "fp16 screen" in fns:
                    runs = "fp16 screen"
                else:
                    runs = "W @ x.T" if as_w_xt(rows, x_NK, weights[0]) else "F.linear"
                out.append((name, rows, times, runs))
    return out


def screen_bytes(model) -> int:
    """Weight bytes a greedy step reads with the screen: the blocks' weights and the fp16 unembedding."""
    return step_bytes(model) - model.W_U.numel() * 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if max(args.batches) > len(PROMPTS):
        raise SystemExit(f"--batches: at most {len(PROMPTS)} prompts are defined")
    from g2interp import load_model

    dtype = getattr(torch, args.dtype)
    ours = load_model("gemma-3-270m", device=args.device, dtype=dtype)
    hf, _ = reference_models(args.device, dtype)
    N = args.new_tokens

    fns, inputs = {}, {}

    def ours_generate(tokens_BP, mask_BP, n, screen):
        ours.screen_greedy = screen
        return ours.generate(tokens_BP, n, attention_mask=mask_BP, stop_at_eos=False).tokens

    impls = ("g2interp", "g2interp full logits", "transformers")
    for B in args.batches:
        tokens_BP, mask_BP = ours.tokenize(PROMPTS[:B], padding_side="left")
        inputs[B] = tokens_BP, mask_BP
        for n in (N, 1):
            for impl, screen in (("g2interp", True), ("g2interp full logits", False)):
                fns[(impl, B, n)] = lambda t=tokens_BP, m=mask_BP, n=n, s=screen: ours_generate(t, m, n, s)
            fns[("transformers", B, n)] = lambda t=tokens_BP, m=mask_BP, n=n: _hf_generate(hf, t, m, n)
    outputs = {key: fn() for key, fn in fns.items()}  # the warm-up round
    times = interleaved(fns, args.repeats, args.device, warmup=False)
    ours.screen_greedy = True
    bandwidth = copy_bandwidth(args.device)
    floor = step_bytes(ours) / bandwidth

    print(
        f"\ngreedy generation, embedded Gemma 3 270M, {args.dtype} {args.device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {N} new tokens, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write); weights per step "
        f"{step_bytes(ours) / 1e9:.3f} GB; bandwidth floor {floor * 1e3:.1f} ms/step "
        f"(of the {screen_bytes(ours) / 1e9:.3f} GB the screened step reads: "
        f"{screen_bytes(ours) / bandwidth * 1e3:.1f} ms)"
    )
    print(
        f"{'batch':>5s}  {'implementation':21s} {'tokens/s':>9s} {'vs transformers':>16s} "
        f"{'ms/step':>8s} {'step/floor':>11s}  continuations"
    )
    for B in args.batches:
        ref_time = median(times[("transformers", B, N)])
        for impl in impls:
            total = median(times[(impl, B, N)])
            step = (total - median(times[(impl, B, 1)])) / (N - 1)
            same = outputs[(impl, B, N)].tolist() == outputs[("transformers", B, N)].tolist()
            print(
                f"{B:5d}  {impl:21s} {B * N / total:9.1f} {ref_time / total:15.2f}x "
                f"{step * 1e3:8.1f} {step / floor:10.2f}x  {'equal' if same else 'DIFFER'}"
            )

    print(
        "\nlogits of the prompts' last position, g2interp decode path against its full forward and transformers"
    )
    with torch.no_grad():
        for B, (tokens_BP, mask_BP) in inputs.items():
            last = ours(tokens_BP, mask_BP, last_only=True)[:, -1].float()
            full = ours(tokens_BP, mask_BP)[:, -1].float()
            ref = hf(tokens_BP, attention_mask=mask_BP).logits[:, -1].float()
            scale = ref.abs().max()
            print(
                f"batch {B}: max |decode - full| / max|logit| {((last - full).abs().max() / scale).item():.1e}, "
                f"vs transformers {((last - ref).abs().max() / scale).item():.1e}"
            )

    print(f"\nproducts of one decode step (all blocks' weights in turn), ms, median of {args.repeats + 2}")
    print(f"{'product':18s} {'rows':>4s} " + " ".join(f"{k:>14s}" for k in KERNELS))
    for name, rows, times, runs in kernel_rows(ours, args.batches, args.repeats + 2):
        cells = [
            (f"{times[k] * 1e3:.2f}" + ("*" if k == runs else " ")) if k in times else "- " for k in KERNELS
        ]
        print(f"{name:18s} {rows:4d} " + " ".join(f"{c:>14s}" for c in cells))
    print(loadavg())


def _hf_generate(hf, tokens_BP: torch.Tensor, mask_BP: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(
            input_ids=tokens_BP,
            attention_mask=mask_BP,
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )


if __name__ == "__main__":
    main()
