"""``g2interp train-sae``: one flag per field of :class:`TrainSAEConfig` and :class:`SAETrainingConfig`.

    g2interp train-sae --out runs/l6 --d-sae 4096 --total-tokens 1000000 --target-l0 40 \\
        --hook-name blocks.6.hook_resid_post --corpus /work/shared/data/corpus --context-length 1024

Data-parallel: ``torchrun --nproc_per_node N -m g2interp.sae.cli ...`` (gloo on CPU, NCCL on CUDA);
each rank captures its own share of the contexts and trains on its slice of every batch.
Help for each flag is the field's docstring. Re-running a command resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch

from g2interp.activations.config import field_docs
from g2interp.sae.data import CorpusError, hook_shape
from g2interp.sae.distributed import init_data_parallel
from g2interp.sae.run import TrainSAEConfig, train_sae
from g2interp.sae.training import B_DEC_INITS, SAETrainingConfig

logger = logging.getLogger("g2interp.sae.cli")

#: SAETrainingConfig fields the run fills in itself (from the model and ``--hook-name``).
_DERIVED = ("d_in", "hook_name", "model_name", "reshape_hook_z")
_EXIT_USAGE = 2
_CHOICES = {"b_dec_init": B_DEC_INITS}


def _add_fields(parser: argparse._ArgumentGroup, cls: type, skip: Sequence[str]) -> None:
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": docs.get(f.name, "").replace("%", "%%")}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs.update(required=True, default=argparse.SUPPRESS)
        else:
            kwargs["default"] = f.default
        kind = str(f.type).replace(" ", "")
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("tuple["):
            kwargs.update(nargs=2, type=float, metavar=("A", "B"))
        else:
            base = kind.removesuffix("|None")
            kwargs["type"] = {"int": int, "float": float, "str": str}[base]
            if f.name in _CHOICES:
                kwargs["choices"] = _CHOICES[f.name]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="g2interp train-sae",
        description="Train a JumpReLU SAE (Gemma Scope recipe) on a Gemma model's activations and evaluate it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_fields(parser.add_argument_group("run"), TrainSAEConfig, skip=("training",))
    _add_fields(parser.add_argument_group("training"), SAETrainingConfig, skip=_DERIVED)
    extra = parser.add_argument_group("process")
    extra.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    extra.add_argument("--log-level", default="INFO", help="logging level")
    extra.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(
    args: argparse.Namespace, *, d_in: int, reshape_hook_z: bool = False, model_name: str = ""
) -> TrainSAEConfig:
    """The run's frozen config from parsed flags and the hook's width."""
    values = vars(args)
    training = SAETrainingConfig(
        d_in=d_in,
        hook_name=values["hook_name"],
        model_name=model_name,
        reshape_hook_z=reshape_hook_z,
        **{f.name: values[f.name] for f in dataclasses.fields(SAETrainingConfig) if f.name not in _DERIVED},
    )
    run_fields = [f.name for f in dataclasses.fields(TrainSAEConfig) if f.name != "training"]
    return TrainSAEConfig(training=training, **{name: values[name] for name in run_fields})


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, load the model, train and evaluate; 0 on success, 2 on a usage or data error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    parallel = init_data_parallel()
    try:
        from g2interp.loading import load_model

        model = load_model(args.source, device=args.device, dtype=args.dtype)
        shape = hook_shape(model, args.hook_name)
        cfg = config_from_args(
            args,
            d_in=int(torch.Size(shape).numel()),
            reshape_hook_z=len(shape) == 2,
            model_name=str(args.source),
        )
        result = train_sae(cfg, model=model, parallel=parallel, progress=not args.no_progress)
        if result.eval is not None and result.delta_loss is not None:
            summary = {
                "sae_dir": str(result.sae_dir),
                "hook_name": cfg.hook_name,
                "d_sae": cfg.training.d_sae,
                "l0": result.eval.l0,
                "fvu": result.eval.fvu,
                "dead_fraction": result.eval.dead_fraction,
                "delta_loss": result.delta_loss.delta_loss,
                "fraction_recovered": result.delta_loss.fraction_recovered,
                "seconds": result.seconds,
            }
            print(json.dumps(summary, indent=2))
        return 0
    except (ValueError, KeyError, FileNotFoundError, CorpusError) as exc:
        print(f"g2interp train-sae: error: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    finally:
        if parallel is not None:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
