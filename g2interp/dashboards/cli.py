"""``g2interp dashboards``: precompute an SAE's latent dashboards over its held-out contexts.

    g2interp dashboards --sae runs/saes/blocks.6.hook_resid_post/sae_0

The activations are the ones the SAE was trained on, found from its provenance (cfg.json
``metadata.activations``): its store when that folder still holds it (``--store`` names another copy),
else the same packing captured on the fly. By default the store's held-out ``eval`` contexts are read;
the dashboards go to ``SAE_FOLDER/dashboards/`` unless ``--out`` says otherwise. A build that is already
there for the same SAE weights, settings and activations is kept (``--force`` rebuilds).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from g2interp.activations.corpus import SPLITS
from g2interp.activations.manifest import StoreError
from g2interp.cli_config import (
    add_config_arguments,
    add_process_arguments,
    config_from_args,
    stage_main,
    stage_parser,
)
from g2interp.dashboards.build import DashboardConfig, build_dashboards, dashboards_current, default_folder

logger = logging.getLogger("g2interp.dashboards.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(
        "g2interp dashboards",
        "Precompute latent dashboards (top contexts, histograms, densities, logit effects) of an SAE.",
    )
    parser.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae_weights.safetensors)")
    parser.add_argument(
        "--store", default=None, help="activation store to read (default: the SAE's, from its provenance)"
    )
    parser.add_argument(
        "--model", default=None, help="model source (default: the one the SAE's activations come from)"
    )
    parser.add_argument(
        "--split", default="eval", choices=SPLITS, help="contexts to build from (eval: held out)"
    )
    parser.add_argument("--out", default=None, help="dashboards folder; when not given, SAE/dashboards")
    parser.add_argument("--device", default=None, help="cpu or cuda; when not given, cuda when available")
    parser.add_argument("--force", action="store_true", help="rebuild even when current dashboards exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser.add_argument_group("dashboard settings"), DashboardConfig)
    add_process_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    """Build (or keep) the dashboards; a JSON-ready summary."""
    from g2interp.loading import load_model
    from g2interp.sae.pipeline import open_sae_source, source_model
    from g2interp.sae.sae import JumpReLUSAE

    cfg = config_from_args(DashboardConfig, args)
    sae = JumpReLUSAE.load(args.sae)
    model = load_model(args.model, device=args.device) if args.model else None
    source = open_sae_source(sae, store=args.store, model=model)
    model = source_model(source, model, requested=args.model or "", device=args.device)
    out = Path(args.out) if args.out else default_folder(args.sae)
    if not args.force and dashboards_current(out, sae, cfg, source=source, split=args.split):
        logger.info("dashboards in %s are current for this SAE, settings and activations; nothing to do", out)
        return {"dashboards": str(out), "built": False}
    sae = sae.to(model.device)
    result = build_dashboards(model, sae, source, out, cfg, split=args.split, progress=not args.no_progress)
    return {
        "dashboards": str(result.folder),
        "built": True,
        "hook_name": sae.cfg.hook_name,
        "d_sae": sae.cfg.d_sae,
        "source": source.name,
        "split": args.split,
        "contexts": result.n_contexts,
        "tokens": result.n_tokens,
        "dead_fraction": result.dead_fraction,
        "seconds": result.seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and build; 0 on success, 2 on a usage or data error."""
    return stage_main(build_parser(), run, argv, usage=(StoreError,))


if __name__ == "__main__":
    sys.exit(main())
