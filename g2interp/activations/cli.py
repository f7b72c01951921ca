"""``g2interp capture``: flags generated from :class:`CaptureConfig`, one per field, help from its docstring.

Data-parallel: ``torchrun --nproc_per_node N -m g2interp.activations.cli ...`` (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from g2interp.activations.config import EXCLUDABLE, STORE_DTYPES, CaptureConfig
from g2interp.activations.manifest import StoreError, StoreWriteError
from g2interp.cli_config import (
    add_config_arguments,
    add_process_arguments,
    config_from_args,
    stage_main,
    stage_parser,
)

logger = logging.getLogger("g2interp.activations.cli")


def split_names(values: Sequence[str]) -> tuple[str, ...]:
    """``--hooks a,b c`` -> (a, b, c)."""
    return tuple(name for value in values for name in value.replace(",", " ").split())


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(
        "g2interp capture",
        "Capture activations of a Gemma model over a corpus into a sharded, resumable store.",
    )
    add_config_arguments(
        parser, CaptureConfig, choices={"exclude": EXCLUDABLE, "dtype": sorted(STORE_DTYPES)}
    )
    add_process_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    """Capture as the flags say; the store's summary."""
    from g2interp.activations.capture import capture
    from g2interp.distributed import close_data_parallel, init_data_parallel
    from g2interp.loading import load_model

    cfg = config_from_args(CaptureConfig, args, hooks=split_names(args.hooks))
    parallel = init_data_parallel(device=cfg.device)
    device = parallel.device
    try:
        model = load_model(cfg.model, device=device, dtype=cfg.model_dtype)
        result = capture(model, replace(cfg, device=device))
    finally:
        close_data_parallel(parallel)
    m = result.manifest
    return {
        "store": str(result.path),
        "complete": m.complete,
        "shards": f"{len(m.shards)}/{m.n_shards}",
        "contexts": m.n_contexts,
        "eval_contexts": m.n_eval,
        "fingerprint": m.fingerprint,
        "hooks": {
            h: {"d": i.d, "rows": i.rows, "mean_squared_norm": i.mean_squared_norm}
            for h, i in m.hooks.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run a capture from command-line flags; returns the exit status (0 done, 2 refused, 1 failed)."""
    parser = build_parser()
    return stage_main(parser, run, argv, usage=(StoreError,), failures=(StoreWriteError, OSError))


if __name__ == "__main__":
    sys.exit(main())
