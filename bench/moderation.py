"""Benchmark: moderation throughput on the embedded Gemma 3 270M (fp32 CPU), and RSS over many calls.

Scores the same texts four ways, with 1 and 4 policies (ShieldGemma's four harm types):

* ``naive``: one full forward per (text, policy), only the 'Yes'/'No' unembedding rows applied to the
  last position (the strong reference: the 262k-wide LM head does not dominate it); the ratios are
  against this row;
* ``naive, full logits``: the same forwards reading the model's [batch, tokens, vocab] logits, as
  ShieldGemma's published code (``model(**inputs).logits``) does; timed on the first ``--full-logits-texts``
  texts only, since it is slow;
* ``generative``: the Moderator's generative scorer, each text's prefix run once and every policy suffix
  continuing it from the KV cache (whole texts, as the naive reference);
* ``probe``: the default ``Moderator.load()``: one prefix forward up to the deepest head layer scores all
  policies, for the whole text and each of its sentences (sentence views); ``probe, whole text only``
  without the sentence views (``max_sentences=0``).

Each throughput is one pass over the texts (the probe, being quick: best of 3), on a machine that may be
shared, so compare ratios within one run. Texts are cut from ``tests/fixtures/corpus_small.jsonl`` (public-domain / CC BY 4.0 prose) into pieces of
8-96 words (seeded). Then ``check_prompt`` latency (p50 / p95) on one short prompt, and ``check_prompt`` ``--calls`` times in
sequence on one text at a time while the process RSS is sampled.

    python bench/moderation.py [--texts 32] [--calls 1000] [--threads 1] [--out runs/moderation/bench.md]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fixtures" / "corpus_small.jsonl"


def bench_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = []
    for line in CORPUS.read_text().splitlines():
        words += json.loads(line)["text"].split()
    out = []
    for _ in range(n):
        k = rng.randint(8, 96)
        start = rng.randrange(len(words) - k)
        out.append(" ".join(words[start : start + k]))
    return out


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=32, help="texts per throughput measurement")
    parser.add_argument(
        "--calls", type=int, default=1000, help="sequential check_prompt calls for the RSS check"
    )
    parser.add_argument(
        "--full-logits-texts", type=int, default=8, help="texts for the full-logits reference (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the latency is quoted at 1)")
    parser.add_argument("--latency-calls", type=int, default=200, help="check_prompt calls for p50 / p95")
    parser.add_argument("--out", type=Path, default=None, help="also write the printed tables to this file")
    args = parser.parse_args()
    lines: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    if args.threads:
        torch.set_num_threads(args.threads)
    import psutil

    from g2interp.moderation import DEFAULT_POLICIES, Moderator, ModeratorConfig, score_naive

    texts = bench_texts(args.texts)
    probe = Moderator.load()
    model = probe.model
    whole_text = ModeratorConfig(max_sentences=0)  # the naive reference scores whole texts only
    generative = Moderator(model, scorer="generative", config=whole_text)
    n_tokens = sum(len(probe.encoder.encode_prompt(t).ids) for t in texts)
    emit(
        f"{len(texts)} texts, {n_tokens / len(texts):.0f} template tokens before the policy on average; "
        f"torch threads {torch.get_num_threads()}; probe heads read layers {probe.heads.layers}"
    )
    probe.score_prompts(texts[:2])  # warm-up (preamble caches, allocator)
    generative.score_prompts(texts[:2])
    rows = []
    for n_pol in (1, 4):
        policies = DEFAULT_POLICIES[:n_pol] if n_pol == 1 else DEFAULT_POLICIES
        names = [p.name for p in policies]
        encoded = [probe.encoder.encode_prompt(t) for t in texts]
        t_naive = timed(
            lambda policies=policies, encoded=encoded: score_naive(model, probe.encoder, encoded, policies)
        )
        n_full = min(args.full_logits_texts, len(texts))
        t_full = (
            timed(
                lambda policies=policies, encoded=encoded[:n_full]: score_naive(
                    model, probe.encoder, encoded, policies, full_logits=True
                )
            )
            * len(texts)
            / n_full
            if n_full
            else None
        )
        gen = Moderator(model, names, scorer="generative", config=whole_text)
        t_gen = timed(lambda gen=gen: gen.score_prompts(texts))
        prb = Moderator(model, names, heads=probe.heads, scorer="probe")
        t_probe = timed(lambda prb=prb: prb.score_prompts(texts), repeats=3)
        whole = Moderator(model, names, heads=probe.heads, scorer="probe", config=whole_text)
        t_whole = timed(lambda whole=whole: whole.score_prompts(texts), repeats=3)
        for name, t in (
            (f"naive, full logits ({n_full} texts)", t_full),
            ("naive (1 forward / policy)", t_naive),
            ("generative, shared prefix", t_gen),
            ("probe heads, whole text only", t_whole),
            ("probe heads (default: + sentence views)", t_probe),
        ):
            if t is not None:
                rows.append((n_pol, name, len(texts) / t, t_naive / t))
    emit("\n| policies | scorer | texts/s | x naive |\n|---|---|---|---|")
    for n_pol, name, tps, ratio in rows:
        emit(f"| {n_pol} | {name} | {tps:.2f} | {ratio:.1f} |")

    short = "How do I get a stuck jar lid open?"
    lat = []
    for _ in range(args.latency_calls):
        t0 = time.perf_counter()
        probe.check_prompt(short)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    emit(
        f"\ncheck_prompt latency on one short prompt ({len(probe.encoder.encode_prompt(short).ids)} template "
        f"tokens, {args.latency_calls} calls, torch threads {torch.get_num_threads()}): "
        f"p50 {p50 * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms"
    )

    proc = psutil.Process()
    samples = []
    t0 = time.perf_counter()
    for i in range(args.calls):
        probe.check_prompt(texts[i % len(texts)])
        if i % max(1, args.calls // 10) == 0 or i == args.calls - 1:
            samples.append((i + 1, proc.memory_info().rss / 2**20))
    dt = time.perf_counter() - t0
    emit(
        f"\nRSS over {args.calls} sequential check_prompt calls ({args.calls / dt:.1f} calls/s, 4 policies, probe):"
    )
    emit()
    emit("| call | RSS MiB |\n|---|---|")
    for i, rss in samples:
        emit(f"| {i} | {rss:.1f} |")
    growth = samples[-1][1] - samples[1][1] if len(samples) > 1 else 0.0
    emit(f"growth after the first {samples[1][0] if len(samples) > 1 else 1} calls: {growth:+.1f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
