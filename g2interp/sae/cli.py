"""``g2interp train-sae``: SAEs from an activation store (or captured on the fly), evaluated on held-out contexts.

    g2interp train-sae --store runs/store --hook blocks.6.hook_resid_post --hook blocks.9.hook_mlp_out --out runs/saes
    g2interp train-sae --model gemma-3-270m --data corpus/ --context-length 128 --hook blocks.6.hook_resid_post --out runs/l6
    g2interp train-sae --store runs/store --hook blocks.6.hook_resid_post --d-sae 2048 4096 --target-l0 20 40 --out runs/sweep
    g2interp train-sae --store runs/store --hook blocks.6.hook_resid_post --architecture matryoshka --target-l0 40 --out runs/mat
    g2interp train-sae --store runs/store --hook blocks.6.hook_mlp_in --transcoder --affine-skip --out runs/tc

One SAE per hook (or per width x target L0), all from one stream of the store's batches. Settings start
from ``--recipe`` and any :class:`SAETrainingConfig` flag overrides them; without ``--total-tokens`` the
run is the recipe's epochs over the training rows. Data-parallel: ``torchrun --nproc_per_node N -m
g2interp.sae.cli ...``. Re-running a command resumes from its checkpoints (or does nothing when done).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from g2interp.activations.config import EXCLUDABLE, ContextsConfig
from g2interp.activations.manifest import StoreError
from g2interp.cli_config import (
    add_config_arguments,
    add_process_arguments,
    config_from_args,
    config_values,
    stage_main,
    stage_parser,
)
from g2interp.sae.pipeline import EvalConfig
from g2interp.sae.recipes import RECIPES
from g2interp.sae.training import ARCHITECTURES, B_DEC_INITS, L0_TARGET_SCOPES, SAETrainingConfig

logger = logging.getLogger("g2interp.sae.cli")

#: SAETrainingConfig fields the run sets itself (from the source, the hook and the sweep).
_DERIVED = (
    "d_in",
    "d_sae",
    "total_tokens",
    "target_l0",
    "hook_name",
    "hook_name_out",
    "d_out",
    "model_name",
    "reshape_hook_z",
)


@dataclass(frozen=True, kw_only=True)
class TrainSAEConfig:
    """What to train: from which activations, which hooks, with which recipe, into which folder."""

    out: str
    """Output folder: one sub-folder per SAE (``<hook>``), each with checkpoints and ``sae_0/``."""
    hook: tuple[str, ...]
    """Hooks to train SAEs on (``--hook A --hook B``), each read from the same batches."""
    store: str | None = None
    """Activation store to train from (``g2interp capture``); without it, activations are captured on the fly from ``--data``."""
    model: str | None = None
    """Model source: with ``--store``, checked to be the store's model (default: the store's); on the fly, the model to run (default: the embedded one)."""
    data: str | None = None
    """Corpus to capture from on the fly (only without ``--store``; packed with the contexts flags below)."""
    recipe: str = "short-run"
    """Named training recipe the settings start from."""
    d_sae: tuple[int, ...] = ()
    """Latents; several values train a sweep (default: the recipe's)."""
    target_l0: tuple[float, ...] = ()
    """Target L0 (``jumprelu``: the quadratic penalty's target, 0 for a linear L0 penalty; ``batchtopk`` and
    ``matryoshka``: k); several values train a sweep (default: the recipe's)."""
    transcoder: bool = False
    """Train transcoders: each ``--hook`` is an MLP input ``blocks.L.hook_mlp_in`` and its transcoder
    reconstructs ``blocks.L.hook_mlp_out`` (the store must hold both; ``--affine-skip`` adds a skip)."""
    total_tokens: int | None = None
    """Tokens each SAE trains on, repeats counted (default: the recipe's epochs over the training rows)."""
    epochs: int | None = None
    """Passes over the training rows when ``--total-tokens`` is not given (default: the recipe's)."""
    seed: int = 0
    """Seed of the batch order (and, on the fly, of the packing and held-out choice)."""
    batch_contexts: int = 8
    """Contexts per forward pass of the model (on-the-fly capture)."""
    device: str | None = None
    """Device of the model and the SAEs (default: CUDA when available)."""
    model_dtype: str | None = None
    """Model dtype (default: bfloat16 on CUDA, float32 on CPU); the SAEs train in float32."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.store is None and self.data is None:
            raise ValueError("give --store STORE, or --data CORPUS to capture on the fly")
        if self.store is not None and self.data is not None:
            raise ValueError("give --store or --data, not both (a store already holds its corpus)")
        if self.recipe not in RECIPES:
            raise ValueError(f"no recipe {self.recipe!r}; the recipes are {sorted(RECIPES)}")


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(
        "g2interp train-sae",
        "Train SAEs and transcoders (JumpReLU, BatchTopK, Matryoshka) on a Gemma model's activations and evaluate them on held-out contexts.",
    )
    add_config_arguments(
        parser.add_argument_group("run"), TrainSAEConfig, choices={"recipe": sorted(RECIPES)}
    )
    add_config_arguments(parser.add_argument_group("evaluation"), EvalConfig)
    add_config_arguments(
        parser.add_argument_group(
            "contexts, on the fly (without --store; the defaults are ContextsConfig's)"
        ),
        ContextsConfig,
        skip=("data", "seed"),
        choices={"exclude": EXCLUDABLE},
        overrides_only=True,
    )
    add_config_arguments(
        parser.add_argument_group("training (overrides of the recipe)"),
        SAETrainingConfig,
        skip=_DERIVED,
        choices={"b_dec_init": B_DEC_INITS, "architecture": ARCHITECTURES, "l0_target_per": L0_TARGET_SCOPES},
        overrides_only=True,
    )
    add_process_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate as the flags say; a JSON-ready summary per SAE."""
    from g2interp.activations.source import ActivationSource, OnTheFlySource
    from g2interp.activations.store import ActivationStore
    from g2interp.constants import EMBEDDED_MODEL
    from g2interp.distributed import close_data_parallel, init_data_parallel
    from g2interp.loading import load_model
    from g2interp.sae.pipeline import plan_saes, train_saes

    cfg = config_from_args(TrainSAEConfig, args)
    eval_cfg = config_from_args(EvalConfig, args)
    parallel = init_data_parallel(device=cfg.device)
    device = parallel.device
    try:
        model = None
        if cfg.model is not None or cfg.store is None:
            model = load_model(cfg.model or EMBEDDED_MODEL, device=device, dtype=cfg.model_dtype)
        if cfg.store is not None:
            source: ActivationSource = ActivationStore(cfg.store)
            if model is not None:
                source.check_model(model, cfg.model or "")
        else:
            contexts = config_from_args(ContextsConfig, args)  # data and seed: the run's
            source = OnTheFlySource(
                model, contexts, model_source=cfg.model or EMBEDDED_MODEL, batch_contexts=cfg.batch_contexts
            )
        sweep = {k: getattr(cfg, k) for k in ("d_sae", "target_l0", "total_tokens", "epochs")}
        overrides = {k: v for k, v in config_values(SAETrainingConfig, args).items() if k not in _DERIVED}
        specs = plan_saes(source, cfg.hook, cfg.recipe, transcoder=cfg.transcoder, **sweep, **overrides)
        if model is None and parallel.is_main:
            model = load_model(source.model_source, device=device, dtype=cfg.model_dtype)
        results = train_saes(
            source,
            specs,
            cfg.out,
            model=model,
            eval_cfg=eval_cfg,
            seed=cfg.seed,
            parallel=parallel,
            progress=cfg.progress,
        )
    finally:
        close_data_parallel(parallel)
    return {"saes": [r.summary() for r in results]}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train and evaluate; 0 on success, 2 on a usage or data error."""
    return stage_main(build_parser(), run, argv, usage=(StoreError,))


if __name__ == "__main__":
    sys.exit(main())
