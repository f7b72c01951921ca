"""``g2interp dashboards``: precompute an SAE's latent dashboards over a corpus.

    g2interp dashboards --sae runs/saes/blocks.6.hook_resid_post/sae_0 --data ../shared/data/corpus \\
        --context-length 128 --max-contexts 512

The corpus is packed into contexts (BOS first, documents joined with EOS, seeded order), the model runs
to the SAE's hook only, and the dashboards go to ``SAE_FOLDER/dashboards/`` unless ``--out`` says
otherwise. A build that is already there for the same SAE weights, settings and corpus is kept
(``--force`` rebuilds). Flags of :class:`DashboardConfig` take its field docstrings as help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from g2interp.activations.config import field_docs
from g2interp.activations.corpus import CorpusError
from g2interp.constants import EMBEDDED_MODEL
from g2interp.dashboards.build import DashboardConfig, build_dashboards, dashboards_current, default_folder

logger = logging.getLogger("g2interp.dashboards.cli")
_EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="g2interp dashboards",
        description="Precompute latent dashboards (top contexts, histograms, densities, logit effects) of an SAE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae_weights.safetensors)")
    parser.add_argument("--data", required=True, help="corpus: a .jsonl/.json/.txt/.parquet file or a folder")
    parser.add_argument("--out", default=None, help="dashboards folder; when not given, SAE/dashboards")
    parser.add_argument(
        "--model",
        default=None,
        help=f"model source; when not given, the SAE's recorded model if loadable, else {EMBEDDED_MODEL!r}",
    )
    parser.add_argument("--text-field", default="text", help="JSON field holding each document's text")
    parser.add_argument("--context-length", type=int, default=128, help="tokens per context, BOS included")
    parser.add_argument(
        "--max-contexts", type=int, default=512, help="contexts to run (the corpus is cut there)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the document order")
    group = parser.add_argument_group("dashboard settings")
    docs = field_docs(DashboardConfig)
    for f in dataclasses.fields(DashboardConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = docs[f.name].replace("%", "%%")
        if f.type == "bool":
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        elif f.name == "exclude":
            group.add_argument(flag, dest=f.name, nargs="*", default=list(f.default), help=help_text)
        else:
            kind = {"int": int, "float": float}[str(f.type)]
            group.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)
    extra = parser.add_argument_group("process")
    extra.add_argument("--device", default=None, help="cpu or cuda; when not given, cuda when available")
    extra.add_argument("--dtype", default=None, help="model dtype; when not given, bf16 on cuda, fp32 on cpu")
    extra.add_argument("--force", action="store_true", help="rebuild even when current dashboards exist")
    extra.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    extra.add_argument("--no-progress", action="store_true", help="no progress bar")
    extra.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def _model_source(requested: str | None, recorded: str) -> str:
    if requested:
        return requested
    if recorded and (recorded == EMBEDDED_MODEL or Path(recorded).expanduser().exists()):
        return recorded
    return EMBEDDED_MODEL


def run(args: argparse.Namespace) -> dict:
    """Build (or keep) the dashboards; a JSON-ready summary."""
    from g2interp.activations.corpus import pack_corpus
    from g2interp.loading import load_model
    from g2interp.sae.sae import JumpReLUSAE

    cfg = DashboardConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DashboardConfig)})
    sae = JumpReLUSAE.load(args.sae)
    out = Path(args.out) if args.out else default_folder(args.sae)
    source = f"{args.data} (context_length={args.context_length}, max_contexts={args.max_contexts}, seed={args.seed})"
    if not args.force and dashboards_current(out, sae, cfg, source=source):
        logger.info("dashboards in %s are current for this SAE, settings and corpus; nothing to do", out)
        return {"dashboards": str(out), "built": False}
    model = load_model(_model_source(args.model, sae.cfg.model_name), device=args.device, dtype=args.dtype)
    sae = sae.to(model.device)
    contexts = pack_corpus(
        model.tokenizer,
        args.data,
        args.context_length,
        text_field=args.text_field,
        seed=args.seed,
        max_contexts=args.max_contexts,
    )
    result = build_dashboards(model, sae, contexts, out, cfg, source=source, progress=not args.no_progress)
    return {
        "dashboards": str(result.folder),
        "built": True,
        "hook_name": sae.cfg.hook_name,
        "d_sae": sae.cfg.d_sae,
        "contexts": result.n_contexts,
        "tokens": result.n_tokens,
        "dead_fraction": result.dead_fraction,
        "seconds": result.seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and build; 0 on success, 2 on a usage or data error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        print(json.dumps(run(args), indent=2))
        return 0
    except (ValueError, KeyError, FileNotFoundError, CorpusError) as exc:
        print(f"g2interp dashboards: error: {exc}", file=sys.stderr)
        return _EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
