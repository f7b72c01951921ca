"""The end-to-end demo on the embedded Gemma 3 270M: activations -> JumpReLU SAE -> evaluation -> latent
dashboards -> moderation scores explained by latents -> the explorer on localhost.

    python experiments/demo_pipeline.py                # all stages, then serve the explorer (Ctrl-C stops it)
    python experiments/demo_pipeline.py --no-serve     # stop after the summary

Stages, each keeping what an earlier run left in ``--out`` (default ``runs/demo``):

1. capture ``blocks.L.hook_resid_post`` of ``--train-contexts`` + ``--eval-contexts`` packed contexts of the
   corpus into an activation store (``OUT/store``; the held-out contexts in shards of their own; resumes,
   and is a no-op once complete);
2. train a JumpReLU SAE on the store's shuffled training batches with the library's ``short-run`` recipe
   (``OUT/saes/<hook>/sae_0``; resumes from its checkpoint, kept once finished);
3. evaluate it on the store's held-out contexts (``eval.json``, ``delta_lm_loss.json`` beside it);
4. build its dashboards from the same held-out contexts (``sae_0/dashboards``; kept while current);
5. score example prompts with the Moderator (if ``g2interp.moderation`` is importable) and explain the
   most harmful one's probe score by the SAE's latents (when the SAE is at the probe's layer);
6. print a summary, then run ``streamlit run apps/explorer.py`` on localhost and print its URL.

The corpus is the public-domain one shipped in ``data/demo_corpus`` (about 1.1 M tokens; see its README).
Layer: ``--layer auto`` takes the layer the shipped probe heads read (so the explanation works), else 6.
"""

from __future__ import annotations

import argparse
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

from g2interp import ActivationStore, CaptureConfig, JumpReLUSAE, capture, load_model, plan_saes, train_saes
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
from g2interp.sae.constants import EVAL_RESULTS_FILE
from g2interp.sae.pipeline import EvalConfig, TrainedSAE, evaluate_saes

REPO = Path(__file__).resolve().parents[1]
DEMO_CORPUS = REPO / "data" / "demo_corpus"
DEFAULT_LAYER = 6
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
        "--data", default=str(DEMO_CORPUS), help="corpus file or folder (default: the shipped one)"
    )
    p.add_argument("--layer", default="auto", help="block whose hook_resid_post the SAE reads, or 'auto'")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--train-contexts", type=int, default=4000, help="contexts captured for training")
    p.add_argument(
        "--eval-contexts", type=int, default=128, help="held-out contexts: evaluation and dashboards"
    )
    p.add_argument("--delta-loss-contexts", type=int, default=4, help="of those, scored with the whole model")
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=1, help="passes over the captured training activations")
    p.add_argument("--batch-size", type=int, default=1024)
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


def load_moderator(model):
    """(moderator or None, note): probe heads when shipped for this model, else the generative scorer."""
    try:
        from g2interp.moderation import DEFAULT_POLICIES, UNSAFE, Moderator
    except ImportError as exc:
        return None, f"g2interp.moderation is not importable ({exc})"
    try:
        # the overall (unsafe) probability first, then the four harm types on its scale
        moderator = Moderator(model, [UNSAFE, *DEFAULT_POLICIES], scorer="auto")
    except (FileNotFoundError, ValueError) as exc:
        log.info("no probe heads (%s): the Moderator scores generatively", exc)
        return Moderator(model, scorer="generative"), "generative scorer, no probe heads"
    return moderator, "probe heads" if moderator.heads is not None else "generative scorer"


def choose_layer(requested: str, moderator) -> int:
    """``--layer``, or the layer most of the shipped probe heads read (so the explanation works)."""
    if requested != "auto":
        return int(requested)
    heads = getattr(moderator, "heads", None)
    layers = [layer for name in (heads.heads if heads else ()) for layer in probe_layers(moderator, name)]
    return max(sorted(set(layers)), key=layers.count) if layers else DEFAULT_LAYER


def train(args, store: ActivationStore, hook: str, model, stages: Stages) -> TrainedSAE:
    """Stages 2 and 3: the SAE trained with the short-run recipe and evaluated on the held-out contexts."""
    t0 = time.perf_counter()
    specs = plan_saes(
        store,
        hook,
        "short-run",
        d_sae=[args.d_sae],
        target_l0=[32.0],
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        checkpoint_every=50,
        log_every=25,
    )
    (result,) = train_saes(store, specs, Path(args.out) / "saes", seed=args.seed, evaluate=False)
    note = f"{specs[0].training.total_steps} steps x {args.batch_size} rows, d_sae {args.d_sae}"
    stages.add("train", t0, note if result.trained else f"reused {result.folder}")
    t0 = time.perf_counter()
    earlier = not result.trained and (result.folder / EVAL_RESULTS_FILE).is_file()
    eval_cfg = EvalConfig(delta_loss_contexts=args.delta_loss_contexts)
    (result,) = evaluate_saes(store, [result], model=model, eval_cfg=eval_cfg)
    note = f"{result.evaluation.eval.n_contexts} held-out contexts"
    stages.add("evaluate", t0, f"reused the evaluation on {note}" if earlier else note)
    return result


def moderate(moderator, note: str, sae: JumpReLUSAE, dashboards: Dashboards) -> list[str]:
    """Stage 5: scores of the examples, and the most harmful one's probe score explained."""
    if moderator is None:
        return [f"Moderation skipped: {note}."]
    verdicts = [moderator.check_prompt(text) for text in EXAMPLES]
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
    scores = [v.scores for v in verdicts]
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


def summary(
    result: TrainedSAE, store: ActivationStore, dashboards: Dashboards, stages: Stages, moderation: list[str]
) -> str:
    ev, dl = result.evaluation
    meta = result.sae.cfg.metadata
    lines = ["", "=" * 78, f"SAE {result.folder}  ({dashboards.hook_name}, {dashboards.d_sae} latents)"]
    passes = meta["training_tokens"] / store.n_rows("train")
    lines.append(
        f"  trained on {meta['training_tokens']:,} tokens: {passes:.2f} passes over the store's "
        f"{store.n_rows('train'):,} distinct training tokens ({store.contexts().n_train:,} contexts)"
    )
    lines.append(
        f"  held-out ({ev.n_contexts} contexts, {ev.n_tokens:,} tokens): L0 {ev.l0:.1f}, FVU {ev.fvu:.3f}, "
        f"dead {100 * ev.dead_fraction:.1f}%; on {dl.n_contexts} of them CE {dl.ce_clean:.3f} -> {dl.ce_sae:.3f} "
        f"(zero-ablated {dl.ce_zero:.3f}), loss recovered {dl.fraction_recovered:.3f}"
    )
    lines.append(
        f"  dashboards: {dashboards.n_tokens} held-out tokens, {len(dashboards.dead)} dead latents; densest:"
    )
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

    # 1. The store: training contexts and held-out contexts, packed once.
    t0 = time.perf_counter()
    result = capture(
        model,
        CaptureConfig(
            data=args.data,
            hooks=(hook,),
            out=str(out / "store"),
            context_length=args.context_length,
            max_contexts=args.train_contexts + args.eval_contexts,
            eval_contexts=args.eval_contexts,
            batch_contexts=16,
            seed=args.seed,
        ),
    )
    store = ActivationStore(out / "store")
    note = f"{store.n_rows('train'):,} training rows + {store.n_rows('eval'):,} held out, from {Path(args.data).name}"
    stages.add("capture", t0, note if result.shards_written else f"reused {store.path} ({note})")

    # 2-3. SAE trained on the store's shuffled batches, evaluated on its held-out contexts.
    trained = train(args, store, hook, model, stages)

    # 4. Dashboards over the held-out contexts.
    t0 = time.perf_counter()
    dash_cfg = DashboardConfig()
    folder = default_folder(trained.folder)
    if dashboards_current(folder, trained.sae, dash_cfg, source=store):
        stages.add("dashboards", t0, f"reused {folder}")
    else:
        built = build_dashboards(model, trained.sae, store, folder, dash_cfg)
        stages.add("dashboards", t0, f"{built.n_tokens} tokens, {100 * built.dead_fraction:.1f}% dead")
    dashboards = Dashboards.load(folder)

    # 5. Moderation.
    t0 = time.perf_counter()
    moderation = moderate(moderator, moderation_note, trained.sae, dashboards)
    stages.add("moderation", t0, f"{len(EXAMPLES)} prompts" if moderator is not None else "skipped")

    print(summary(trained, store, dashboards, stages, moderation))
    if not args.no_serve:
        serve(out / "saes", trained.folder, args.port, args.serve_for)


if __name__ == "__main__":
    main()
