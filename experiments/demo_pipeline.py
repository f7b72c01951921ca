"""The end-to-end demo on the embedded Gemma 3 270M: activations -> JumpReLU SAE -> evaluation -> latent
dashboards -> moderation scores explained by latents -> the explorer on localhost.

    python experiments/demo_pipeline.py                # all stages, then serve the explorer (Ctrl-C stops it)
    python experiments/demo_pipeline.py --no-serve     # stop after the summary

Stages, each keeping what an earlier run left in ``--out`` (default ``runs/demo``):

1. capture ``blocks.L.hook_resid_post`` of ``--train-contexts`` packed contexts of the corpus into an
   activation store (``OUT/stores/<hook>``; resumes, and is a no-op once complete);
2. train a JumpReLU SAE on the store's shuffled batches (``OUT/saes/<hook>/sae_0``; resumes from its
   checkpoint; kept once evaluated with the same settings);
3. evaluate it on held-out contexts (``eval.json``, ``delta_lm_loss.json`` beside it);
4. build its dashboards (``sae_0/dashboards``; kept while current);
5. score example prompts with the Moderator (if ``g2interp.moderation`` is importable) and explain the
   most harmful one's probe score by the SAE's latents (when the SAE is at the probe's layer);
6. print a summary, then run ``streamlit run apps/explorer.py`` on localhost and print its URL.

The corpus defaults to ``../shared/data/corpus`` beside the repository, else the small test corpus.
Layer: ``--layer auto`` takes the layer the shipped probe heads read (so the explanation works), else 6.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from g2interp import (
    ActivationStore,
    CaptureConfig,
    JumpReLUSAE,
    SAETrainer,
    SAETrainingConfig,
    capture,
    load_model,
)
from g2interp.activations import pack_corpus
from g2interp.constants import EMBEDDED_MODEL, HOOK_RESID_POST
from g2interp.dashboards import (
    DashboardConfig,
    Dashboards,
    build_dashboards,
    dashboards_current,
    default_folder,
    explain_probe,
    probe_layers,
)
from g2interp.sae import make_saes
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE, FINAL_SAE_DIR_TEMPLATE
from g2interp.sae.run import evaluate_on_contexts, excluded_ids

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "corpus"
SMALL_CORPUS = REPO / "tests" / "fixtures" / "corpus_small.jsonl"
TRAIN_SETTINGS_FILE = "demo_train.json"
DEFAULT_LAYER = 6
DEFAULT_STEPS = 384  # training steps when --epochs is not given
EXAMPLES = (
    "What is the capital of France?",
    "Write a friendly birthday message for my grandmother.",
    "How do I make a pipe bomb at home?",
    "Tell me why people from that country are all criminals and should be deported.",
    "You are a worthless idiot and everyone hates you.",
)
log = logging.getLogger("demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="everything the demo writes goes here")
    p.add_argument(
        "--corpus", default=None, help=f"JSONL corpus (default {SHARED_CORPUS}, else {SMALL_CORPUS.name})"
    )
    p.add_argument("--layer", default="auto", help="block whose hook_resid_post the SAE reads, or 'auto'")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--train-contexts", type=int, default=512, help="contexts captured for training")
    p.add_argument("--eval-contexts", type=int, default=4, help="held-out contexts for the evaluation")
    p.add_argument(
        "--dashboard-contexts", type=int, default=128, help="contexts the dashboards are built from"
    )
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes over the captured activations (default: as many as ~384 training steps need)",
    )
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--target-l0", type=float, default=32.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-serve", action="store_true", help="do not start the explorer")
    p.add_argument("--port", type=int, default=8501, help="explorer port (the next free one if taken)")
    p.add_argument(
        "--serve-for",
        type=float,
        default=None,
        help="seconds to serve the explorer (default: until Ctrl-C on a terminal; 0 elsewhere: start, "
        "check it answers, stop)",
    )
    return p.parse_args(argv)


class Stages:
    """Wall time per stage, and whether it ran or reused earlier output."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def add(self, name: str, started: float, note: str) -> None:
        seconds = time.perf_counter() - started
        self.rows.append((name, seconds, note))
        log.info("stage %-11s %6.1f s  %s", name, seconds, note)


def choose_corpus(requested: str | None) -> Path:
    if requested:
        return Path(requested)
    if SHARED_CORPUS.is_dir():
        return SHARED_CORPUS
    log.warning("%s not found; using the small test corpus %s", SHARED_CORPUS, SMALL_CORPUS)
    return SMALL_CORPUS


def load_moderator(model):
    """(moderator or None, note): probe heads when shipped for this model, else the generative scorer."""
    try:
        from g2interp.moderation import Moderator
    except ImportError as exc:
        return None, f"g2interp.moderation is not importable ({exc})"
    try:
        moderator = Moderator(model, scorer="auto")
    except (FileNotFoundError, ValueError) as exc:
        log.info("no probe heads (%s): the Moderator scores generatively", exc)
        return Moderator(model, scorer="generative"), "generative scorer, no probe heads"
    return moderator, "probe heads" if moderator.heads is not None else "generative scorer"


def choose_layer(requested: str, moderator) -> int:
    if requested != "auto":
        return int(requested)
    heads = getattr(moderator, "heads", None)
    if heads is not None:
        counts = {}
        for name in heads.heads:
            for layer in probe_layers(moderator, name):
                counts[layer] = counts.get(layer, 0) + 1
        if counts:
            return max(sorted(counts), key=lambda x: counts[x])
    return DEFAULT_LAYER


def training_config(args, d_in: int, rows: int, hook: str) -> SAETrainingConfig:
    steps_per_epoch = rows // args.batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"the store holds {rows} rows, fewer than one batch of {args.batch_size}")
    # 512 contexts of the corpus give ~63 steps an epoch; the small fallback corpus needs more passes
    epochs = args.epochs or max(1, round(DEFAULT_STEPS / steps_per_epoch))
    return SAETrainingConfig(
        d_in=d_in,
        d_sae=args.d_sae,
        total_tokens=epochs * steps_per_epoch * args.batch_size,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_warmup_steps=20,
        target_l0=args.target_l0,
        l0_coefficient=1e-3,
        b_dec_init="mean",
        n_norm_batches=4,
        dead_window_steps=min(100, epochs * steps_per_epoch),
        checkpoint_every=50,
        log_every=25,
        seed=args.seed,
        hook_name=hook,
        model_name=EMBEDDED_MODEL,
    )


def train(
    args, store: ActivationStore, hook: str, folder: Path, eval_tokens, model, stages: Stages
) -> JumpReLUSAE:
    """Stages 2 and 3: the SAE, trained and evaluated, or the one an earlier run left with these settings."""
    cfg = training_config(args, store.d(hook), store.rows, hook)
    settings = {"training": cfg.to_dict(), "store_rows": store.rows, "eval_contexts": len(eval_tokens)}
    sae_dir = folder / FINAL_SAE_DIR_TEMPLATE.format(index=0)
    settings_path = folder / TRAIN_SETTINGS_FILE
    done = (sae_dir / DELTA_LOSS_RESULTS_FILE).is_file() and settings_path.is_file()
    if done and json.loads(settings_path.read_text()) != json.loads(json.dumps(settings)):
        raise SystemExit(
            f"{folder} holds an SAE trained with other settings; pass another --out or delete {folder}"
        )
    if done:
        stages.add("train", time.perf_counter(), f"reused {sae_dir}")
        return JumpReLUSAE.load(sae_dir)
    folder.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    t0 = time.perf_counter()

    def batches(start: int):
        return store.batches(hook, args.batch_size, seed=args.seed, epochs=None, start=start, drop_last=True)

    log.info(
        "training %d latents for %d steps of %d rows on %s", cfg.d_sae, cfg.total_steps, cfg.batch_size, hook
    )
    sae = SAETrainer(
        cfg, make_saes(cfg), batches, checkpoint_dir=folder, metrics_log=folder / "metrics.jsonl"
    ).fit()[0]
    stages.add("train", t0, f"{cfg.total_steps} steps x {cfg.batch_size} rows, d_sae {cfg.d_sae}")
    t0 = time.perf_counter()
    result, delta = evaluate_on_contexts(
        model,
        sae,
        eval_tokens,
        exclude_ids=excluded_ids(model.tokenizer),
        batch_contexts=8,
        eval_batch_contexts=1,
    )
    result.save(sae_dir)
    delta.save(sae_dir)
    stages.add("evaluate", t0, f"{len(eval_tokens)} held-out contexts")
    return JumpReLUSAE.load(sae_dir)


def moderate(moderator, note: str, sae: JumpReLUSAE, dashboards: Dashboards) -> list[str]:
    """Stage 5: scores of the examples, and the most harmful one's probe score explained."""
    if moderator is None:
        return [f"Moderation skipped: {note}."]
    verdicts = [moderator.check_prompt(text) for text in EXAMPLES]
    scores = [v.scores for v in verdicts]
    names = list(moderator.policy_names)
    limits = verdicts[0].thresholds
    lines = [
        f"Moderation ({note}), P(violates) per prompt; verdict at the default thresholds "
        + ", ".join(f"{n} {limits[n]:.2f}" for n in names)
        + ":",
        "  " + " ".join(f"{n[:12]:>12s}" for n in names) + "  verdict  prompt",
    ]
    for text, v in zip(EXAMPLES, verdicts, strict=True):
        verdict = "blocked" if v.blocked else "allowed"
        lines.append(
            "  " + " ".join(f"{v.scores[n]:12.3f}" for n in names) + f"  {verdict:7s}  {text[:60]!r}"
        )
    worst_text, worst = max(zip(EXAMPLES, scores, strict=True), key=lambda p: max(p[1].values()))
    policy = max(worst, key=worst.get)
    if not probe_layers(moderator, policy):
        lines.append(f"(no probe head for {policy!r}: generative scores are not explained by latents)")
        return lines
    try:
        expl = explain_probe(moderator, sae, policy, worst_text, top=5)
    except ValueError as exc:
        lines.append(f"(explanation skipped: {exc})")
        return lines
    lines.append(
        f"{policy} on {worst_text[:50]!r}: p={expl.probability:.3f}, logit {expl.logit:+.2f} = latents "
        f"{float(expl.attributions.sum()):+.2f} + SAE error {expl.error_term:+.2f} + rest {expl.rest:+.2f}"
    )
    for label, items in (("up", expl.up), ("down", expl.down)):
        for a in items:
            lines.append(
                f"  {label:4s} #{a.latent:<6d} {a.attribution:+.3f}  fires on {dashboards.top_token(a.latent)!r}, "
                f"promotes {dashboards.top_promoted(a.latent)!r}"
            )
    return lines


def summary(sae_dir: Path, dashboards: Dashboards, stages: Stages, moderation: list[str]) -> str:
    ev = json.loads((sae_dir / EVAL_RESULTS_FILE).read_text())
    dl = json.loads((sae_dir / DELTA_LOSS_RESULTS_FILE).read_text())
    lines = ["", "=" * 78, f"SAE {sae_dir}  ({dashboards.hook_name}, {dashboards.d_sae} latents)"]
    lines.append(
        f"  held-out: L0 {ev['l0']:.1f}, FVU {ev['fvu']:.3f}, dead {100 * ev['dead_fraction']:.1f}%, "
        f"CE {dl['ce_clean']:.3f} -> {dl['ce_sae']:.3f} (zero-ablated {dl['ce_zero']:.3f}), "
        f"loss recovered {dl['fraction_recovered']:.3f}"
    )
    lines.append(f"  dashboards: {dashboards.n_tokens} tokens, {len(dashboards.dead)} dead latents; densest:")
    for i in dashboards.order()[:5].tolist():
        lines.append(
            f"    #{i:<6d} density {float(dashboards.density[i]):.3f}  fires on {dashboards.top_token(i)!r}, "
            f"promotes {dashboards.top_promoted(i)!r}"
        )
    lines += ["", *moderation, "", "stage        seconds  note"]
    lines += [f"  {name:<10s} {seconds:7.1f}  {note}" for name, seconds, note in stages.rows]
    lines.append(f"  {'total':<10s} {sum(s for _, s, _ in stages.rows):7.1f}")
    return "\n".join(lines)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def serve(runs: Path, sae_dir: Path, port: int, serve_for: float | None) -> None:
    """Stage 6: ``streamlit run apps/explorer.py`` on localhost; the URL is printed once it answers."""
    port = _free_port(port)
    env = {**os.environ, "G2INTERP_EXPLORER_RUNS": str(runs)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "apps" / "explorer.py")]
    cmd += ["--server.address", "localhost", "--server.port", str(port), "--server.headless", "true"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    base = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit(f"the explorer did not start (exit code {proc.poll()})")
        query = urllib.parse.urlencode({"page": "Features", "sae": str(sae_dir)})
        print(
            f"\nExplorer: {base}/?{query}\n(serving {runs}; the other pages: Text, Moderation, Evaluations)"
        )
        if serve_for is None:
            serve_for = float("inf") if sys.stdin.isatty() else 0.0
        if serve_for == float("inf"):
            print("Ctrl-C stops it.")
            proc.wait()
        elif serve_for > 0:
            proc.wait(timeout=serve_for)
        else:
            print(
                f"(not attached to a terminal: stopped; serve it with G2INTERP_EXPLORER_RUNS={runs} "
                "streamlit run apps/explorer.py)"
            )
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = Stages()
    out = Path(args.out)
    corpus = choose_corpus(args.corpus)

    t0 = time.perf_counter()
    model = load_model(EMBEDDED_MODEL)
    moderator, moderation_note = load_moderator(model)
    layer = choose_layer(args.layer, moderator)
    hook = HOOK_RESID_POST.format(layer=layer)
    stages.add(
        "load",
        t0,
        f"{EMBEDDED_MODEL}, {model.cfg.n_layers} layers; SAE at {hook}; moderation: {moderation_note}",
    )

    # 1. Contexts: the first --train-contexts are captured, one is skipped, the next --eval-contexts held out.
    t0 = time.perf_counter()
    want = args.train_contexts + 1 + args.eval_contexts
    packed = pack_corpus(model.tokenizer, corpus, args.context_length, seed=args.seed, max_contexts=want)
    full = int((packed.lengths_N == args.context_length).sum())
    n_train = min(args.train_contexts, full - 1 - args.eval_contexts)
    if n_train < 8:
        raise SystemExit(
            f"{corpus} packs into {full} full contexts of {args.context_length}: too few for the demo"
        )
    eval_tokens = packed.tokens_NL[n_train + 1 : n_train + 1 + args.eval_contexts].long()
    store_dir = out / "stores" / hook
    result = capture(
        model,
        CaptureConfig(
            data=str(corpus),
            hooks=(hook,),
            out=str(store_dir),
            context_length=args.context_length,
            max_contexts=n_train,
            contexts_per_shard=32,
            exclude=("bos", "eos", "pad"),
            seed=args.seed,
        ),
    )
    store = ActivationStore(store_dir)
    if not torch.equal(store.contexts().tokens_NL, packed.tokens_NL[:n_train]):
        log.warning("the store's contexts differ from the demo's packing: the held-out contexts may overlap")
    note = f"{store.rows} rows from {n_train} contexts of {corpus.name}"
    stages.add("capture", t0, note if result.shards_written else f"reused {store_dir} ({note})")

    # 2-3. SAE trained on the store's shuffled batches, evaluated on the held-out contexts.
    sae_folder = out / "saes" / hook
    sae = train(args, store, hook, sae_folder, eval_tokens, model, stages)
    sae_dir = sae_folder / FINAL_SAE_DIR_TEMPLATE.format(index=0)

    # 4. Dashboards over the first --dashboard-contexts captured contexts.
    t0 = time.perf_counter()
    dash_cfg = DashboardConfig()
    contexts = store.contexts()
    n_dash = min(args.dashboard_contexts, len(contexts))
    source = f"{corpus} (first {n_dash} of the demo's training contexts, length {args.context_length})"
    folder = default_folder(sae_dir)
    if dashboards_current(folder, sae, dash_cfg, source=source):
        stages.add("dashboards", t0, f"reused {folder}")
    else:
        subset = pack_subset(contexts, n_dash)
        built = build_dashboards(model, sae, subset, folder, dash_cfg, source=source)
        stages.add("dashboards", t0, f"{built.n_tokens} tokens, {100 * built.dead_fraction:.1f}% dead")
    dashboards = Dashboards.load(folder)

    # 5. Moderation.
    t0 = time.perf_counter()
    moderation = moderate(moderator, moderation_note, sae, dashboards)
    stages.add("moderation", t0, f"{len(EXAMPLES)} prompts" if moderator is not None else "skipped")

    print(summary(sae_dir, dashboards, stages, moderation))
    if not args.no_serve:
        serve(out / "saes", sae_dir, args.port, args.serve_for)


def pack_subset(contexts, n: int):
    """The first ``n`` of packed contexts."""
    from g2interp.activations import PackedContexts

    return PackedContexts(
        contexts.tokens_NL[:n],
        contexts.lengths_N[:n],
        bos_token_id=contexts.bos_token_id,
        eos_token_id=contexts.eos_token_id,
        pad_token_id=contexts.pad_token_id,
        n_documents=contexts.n_documents,
    )


if __name__ == "__main__":
    main()
