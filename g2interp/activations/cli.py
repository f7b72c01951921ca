"""``g2interp capture``: flags generated from :class:`CaptureConfig`, one per field, help from its docstring.

Data-parallel: ``torchrun --nproc_per_node N -m g2interp.activations.cli ...`` (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields

import torch

from g2interp.activations.config import EXCLUDABLE, STORE_DTYPES, CaptureConfig, field_docs

logger = logging.getLogger("g2interp.activations.cli")
_EXIT_USAGE = 2


def _split_names(values: Sequence[str]) -> tuple[str, ...]:
    """``--hooks a,b c`` -> (a, b, c)."""
    return tuple(name for value in values for name in value.replace(",", " ").split())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="g2interp capture",
        description="Capture activations of a Gemma model over a corpus into a sharded, resumable store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    docs = field_docs(CaptureConfig)
    for f in fields(CaptureConfig):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is MISSING and f.default_factory is MISSING
        kwargs: dict = {"help": docs[f.name], "dest": f.name}
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        annotation = str(f.type)
        if annotation == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif annotation.startswith("tuple"):
            kwargs["nargs"] = "+" if required else "*"
            if f.name == "exclude":
                kwargs["choices"] = EXCLUDABLE
        elif annotation.startswith("int"):
            kwargs["type"] = int
        if f.name == "dtype":
            kwargs["choices"] = sorted(STORE_DTYPES)
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[CaptureConfig, argparse.Namespace]:
    """Parse flags into a validated :class:`CaptureConfig` (``SystemExit(2)`` with a message if invalid)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(CaptureConfig)}
    values["hooks"] = _split_names(values["hooks"])
    values["exclude"] = tuple(values["exclude"])
    try:
        return CaptureConfig(**values), args
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _init_distributed(cfg: CaptureConfig) -> tuple[bool, str | None]:
    """Join the torchrun group when launched by torchrun; returns (joined here, device for this rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = cfg.device
    if world <= 1 or torch.distributed.is_initialized():
        return False, device
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return True, device


def main(argv: Sequence[str] | None = None) -> int:
    """Run a capture from command-line flags; returns the exit status (0 done, 2 refused, 1 failed)."""
    cfg, args = parse_config(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO) if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
    )
    from g2interp.activations.capture import capture
    from g2interp.activations.corpus import CorpusError
    from g2interp.activations.manifest import StoreError, StoreWriteError
    from g2interp.loading import load_model

    joined, device = _init_distributed(cfg)
    try:
        model = load_model(cfg.model, device=device, dtype=cfg.model_dtype)
        result = capture(model, cfg)
    except StoreWriteError as exc:
        logger.error("%s", exc)
        return 1
    except (KeyError, ValueError, StoreError, CorpusError, FileNotFoundError) as exc:
        logger.error("%s", exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        return _EXIT_USAGE
    except OSError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        if joined:
            torch.distributed.destroy_process_group()
    m = result.manifest
    if rank == 0:
        for hook, info in m.hooks.items():
            logger.info(
                "%s: d=%d rows=%d mean squared norm %.6g",
                hook,
                info.d,
                info.rows,
                info.mean_squared_norm or 0,
            )
        logger.info(
            "store %s: %d/%d shards, %s",
            result.path,
            len(m.shards),
            m.n_shards,
            "complete" if m.complete else "incomplete",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
