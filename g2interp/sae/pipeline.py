"""Activation source -> SAEs -> evaluations: the engine of ``g2interp train-sae``.

``train_saes(source, plan_saes(source, hooks, "short-run"), out)`` trains one SAE per hook (or a sweep of
widths and target L0s on a hook) from one stream of the source's training batches, then scores each on
the source's held-out contexts. The output folder holds, per SAE, ``OUT/<hook>[/<sweep point>]/``:

    metrics.jsonl       training metrics every ``log_every`` steps
    step_*/ latest.json resumable checkpoints (re-running the same call resumes, or does nothing)
    sae_0/              the SAE (SAELens's layout), with ``eval.json`` and ``delta_lm_loss.json``; its
                        cfg.json ``metadata.activations`` records the source (fingerprint, hook, model,
                        packing, store folder) so the explorer and dashboards find model and contexts

and ``OUT/train_sae.json``, the run's plan.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from g2interp.activations.source import ActivationSource
from g2interp.cli_config import config_from_args, require_ints
from g2interp.distributed import DataParallel
from g2interp.files import atomic_write_text
from g2interp.sae.architectures import make_saes
from g2interp.sae.constants import FINAL_SAE_DIR_TEMPLATE
from g2interp.sae.evaluate import SAEEvaluation, evaluate_on_source
from g2interp.sae.recipes import Recipe, recipe
from g2interp.sae.sae import JumpReLUSAE, transcoder_hook_out
from g2interp.sae.trainer import SAETrainer, train_together
from g2interp.sae.training import SAETrainingConfig

logger = logging.getLogger(__name__)

#: The run's plan, written into the output folder.
RUN_CONFIG_FILE = "train_sae.json"
#: Provenance key in each saved SAE's cfg.json ``metadata``.
PROVENANCE_KEY = "activations"


@dataclass(frozen=True)
class SAESpec:
    """One SAE of a run: the hook it reads, its training settings, its folder under the run's."""

    hook: str
    """Hook whose activations it reads."""
    training: SAETrainingConfig
    """Its settings (``d_in`` the hook's width; a transcoder's ``hook_name_out`` and ``d_out``)."""
    folder: str
    """Folder relative to the run's output (``<hook>``, or ``<hook>/d_sae=..,target_l0=..`` in a sweep;
    a transcoder's ``<hook>-to-<output hook point>``)."""

    @property
    def key(self) -> str | tuple[str, str]:
        """What it trains on in a dict batch: its hook, or a transcoder's (input hook, output hook)."""
        out = self.training.hook_name_out
        return (self.hook, out) if out else self.hook


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How the trained SAEs are scored on the source's held-out contexts."""

    delta_loss_contexts: int = 4
    """Held-out contexts the delta-LM-loss evaluation runs the whole model on (three passes each:
    clean, SAE spliced in, zero-ablated); L0, FVU and dead latents use every held-out context."""
    eval_batch_contexts: int = 1
    """Contexts per forward pass of the delta-loss evaluation (its logits are contexts x length x vocab)."""

    def __post_init__(self) -> None:
        require_ints(self, "delta_loss_contexts", "eval_batch_contexts")


class TrainedSAE(NamedTuple):
    """One SAE of a run, trained (or found trained) and evaluated."""

    spec: SAESpec
    """What was asked for."""
    folder: Path
    """The SAE's folder (``sae_0`` under the spec's)."""
    sae: JumpReLUSAE
    """The SAE, input scale folded in."""
    evaluation: SAEEvaluation | None
    """Its held-out evaluation (None on ranks other than 0)."""
    trained: bool
    """False when an earlier run had already finished it (nothing was trained)."""

    def summary(self) -> dict[str, Any]:
        """One JSON-ready row: where, what, and (when evaluated) the held-out numbers."""
        meta = self.sae.cfg.metadata
        out = {"sae": str(self.folder), "hook": self.spec.hook, "d_in": self.sae.cfg.d_in, "d_sae": self.sae.cfg.d_sae,
               "trained": self.trained, "training_tokens": meta.get("training_tokens"),
               "train_dead_fraction": meta.get("dead_fraction"), "l0_coefficient": meta.get("l0_coefficient"),
               "architecture": meta.get("architecture", "jumprelu"), "target_l0": meta.get("target_l0"),
               "hook_out": self.sae.cfg.hook_name_out or None}  # fmt: skip
        if self.evaluation is not None:
            ev, dl = self.evaluation
            out.update(l0=ev.l0, fvu=ev.fvu, dead_fraction=ev.dead_fraction, eval_tokens=ev.n_tokens,
                       eval_contexts=ev.n_contexts, delta_loss=dl.delta_loss, fraction_recovered=dl.fraction_recovered)  # fmt: skip
        return out


def plan_saes(
    source: ActivationSource,
    hooks: str | Sequence[str],
    recipe_name: str | Recipe = "short-run",
    *,
    d_sae: Sequence[int] = (),
    target_l0: Sequence[float] = (),
    total_tokens: int | None = None,
    epochs: int | None = None,
    transcoder: bool = False,
    **overrides: Any,
) -> list[SAESpec]:
    """One spec per hook x width x target L0 (the recipe's when not given), checked against the source.

    ``total_tokens`` defaults to ``epochs`` (the recipe's) passes over the source's training rows, in
    whole batches; ``overrides`` set other :class:`SAETrainingConfig` fields. ``transcoder``: each hook
    is an MLP input ``blocks.L.hook_mlp_in`` and its transcoder reconstructs ``blocks.L.hook_mlp_out``,
    which the source must hold too.
    """
    r = recipe(recipe_name)
    names = source.check_hooks(hooks)
    outputs = {h: transcoder_hook_out(h) for h in names} if transcoder else {}
    if outputs:
        source.check_hooks(list(outputs.values()))
    widths = list(d_sae) or [r.d_sae]
    targets = list(target_l0) or [overrides.pop("target_l0", r.training.get("target_l0", 0.0))]
    batch_size = overrides.get("batch_size", r.training.get("batch_size", SAETrainingConfig.batch_size))
    rows = source.n_rows("train")
    if total_tokens is None:
        total_tokens = (rows // batch_size) * batch_size * (epochs or r.epochs)
        if total_tokens == 0:
            raise ValueError(
                f"{source.name} holds {rows} training rows, fewer than one batch of {batch_size}"
            )
    sweep = len(widths) * len(targets) > 1
    specs = []
    for hook, width, target in itertools.product(names, widths, targets):
        shape = source.hook_shape(hook)
        out = outputs.get(hook, "")
        if out:
            overrides = {**overrides, "hook_name_out": out, "d_out": source.d(out)}
        cfg = r.config(
            d_in=math.prod(shape),
            d_sae=width,
            total_tokens=total_tokens,
            target_l0=float(target),
            hook_name=hook,
            model_name=source.model_source,
            reshape_hook_z=len(shape) == 2,
            **overrides,
        )
        name = f"{hook}-to-{out.rsplit('.', 1)[-1]}" if out else hook
        folder = f"{name}/d_sae={width},target_l0={target:g}" if sweep else name
        specs.append(SAESpec(hook, cfg, folder))
    return specs


def train_saes(
    source: ActivationSource,
    specs: Sequence[SAESpec],
    out: str | Path,
    *,
    model: Any = None,
    eval_cfg: EvalConfig | None = None,
    seed: int = 0,
    parallel: DataParallel | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> list[TrainedSAE]:
    """Train every spec from one stream of ``source``'s training batches, then (``evaluate``) score each
    on its held-out contexts with ``model`` (loaded from the source's provenance when not given)."""
    if not specs:
        raise ValueError("no SAEs to train")
    eval_cfg = eval_cfg or EvalConfig()
    source.check_eval_contexts(eval_cfg.delta_loss_contexts)  # before any training, not after
    batch_sizes = {s.training.batch_size for s in specs}
    if len(batch_sizes) > 1:
        raise ValueError(f"SAEs trained from one stream share a batch size; got {sorted(batch_sizes)}")
    for spec in specs:
        if source.d(spec.hook) != spec.training.d_in:
            raise ValueError(
                f"d_in {spec.training.d_in} is not the width of {spec.hook} in {source.name}: it is {source.d(spec.hook)}"
            )
        hook_out = spec.training.hook_name_out
        if hook_out and source.d(source.check_hooks(hook_out)[0]) != spec.training.d_out:
            raise ValueError(
                f"d_out {spec.training.d_out} is not the width of {hook_out} in {source.name}: "
                f"it is {source.d(hook_out)}"
            )
    parallel = parallel or DataParallel()
    local_batch = parallel.local_batch_size(specs[0].training.batch_size)
    out = Path(out)
    if parallel.is_main:
        out.mkdir(parents=True, exist_ok=True)
        plan = {"source": source.provenance(""), "seed": seed, "saes": [dataclasses.asdict(s) for s in specs]}
        atomic_write_text(out / RUN_CONFIG_FILE, json.dumps(plan, indent=2) + "\n")
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook, s.training.hook_name_out) if h))
    trainers = [
        SAETrainer(
            s.training,
            make_saes(s.training),
            checkpoint_dir=out / s.folder,
            metrics_log=out / s.folder / "metrics.jsonl",
            progress=False,
            parallel=parallel,
            metadata={PROVENANCE_KEY: source.provenance(s.hook)},
        )
        for s in specs
    ]

    # endless, whole batches, each rank reading its own units
    stream = dict(seed=seed, epochs=None, drop_last=True, rank=parallel.rank, world_size=parallel.world_size)
    started = time.perf_counter()
    finals = train_together(
        trainers,
        lambda start: source.batches(hooks, local_batch, start=start, **stream),
        [s.key for s in specs],
        progress=progress,
    )
    logger.info("trained %d SAEs on %s in %.1f s", len(specs), hooks, time.perf_counter() - started)
    results = [
        TrainedSAE(
            s,
            out / s.folder / FINAL_SAE_DIR_TEMPLATE.format(index=0),
            f[0],
            None,
            t.step_at_start < t.cfg.total_steps,
        )
        for s, f, t in zip(specs, finals, trainers, strict=True)
    ]
    if evaluate and parallel.is_main:
        results = evaluate_saes(source, results, model=model, eval_cfg=eval_cfg)
    parallel.barrier()
    return results


def evaluate_saes(
    source: ActivationSource,
    results: Sequence[TrainedSAE],
    *,
    model: Any = None,
    eval_cfg: EvalConfig | None = None,
) -> list[TrainedSAE]:
    """Score each SAE on the source's held-out contexts (reusing what an earlier run wrote for an SAE
    that was not trained again) and write ``eval.json`` / ``delta_lm_loss.json`` beside it."""
    eval_cfg = eval_cfg or EvalConfig()
    source.check_eval_contexts(eval_cfg.delta_loss_contexts)
    ce_clean = None
    out = []
    for result in results:
        evaluation = None if result.trained else _read_evaluation(result.folder, source)
        if evaluation is None:
            if model is None:
                model = source_model(source)
            evaluation = evaluate_on_source(
                model,
                result.sae.to(getattr(model, "device", "cpu")),
                source,
                delta_loss_contexts=eval_cfg.delta_loss_contexts,
                eval_batch_contexts=eval_cfg.eval_batch_contexts,
                ce_clean=ce_clean,
            )
            evaluation.save(result.folder)
            ce_clean = evaluation.delta_loss.ce_clean  # the same contexts for every SAE: clean runs once
        out.append(result._replace(evaluation=evaluation))
        logger.info("%s: %s", result.spec.folder, {k: v for k, v in out[-1].summary().items() if k != "sae"})
    return out


def open_sae_source(
    sae: JumpReLUSAE, *, store: str | Path | None = None, model: Any = None, batch_contexts: int = 8
) -> ActivationSource:
    """The activations an SAE was trained on, from its provenance: ``store`` if given, else the store it
    names if that folder still holds it, else the same packing captured on the fly with ``model``."""
    from g2interp.activations.config import ContextsConfig
    from g2interp.activations.source import OnTheFlySource
    from g2interp.activations.store import ActivationStore
    from g2interp.loading import load_model

    record = sae.cfg.metadata.get(PROVENANCE_KEY) or {}
    if store is None and record.get("store") and Path(record["store"]).is_dir():
        store = record["store"]
    if store is not None:
        source: ActivationSource = ActivationStore(store)
    elif not record:
        raise ValueError(
            f"the SAE on {sae.cfg.hook_name!r} records no activation source (metadata.{PROVENANCE_KEY}); pass a store"
        )
    else:
        contexts = config_from_args(ContextsConfig, record["contexts"])
        model = model if model is not None else load_model(record["model"])
        source = OnTheFlySource(model, contexts, model_source=record["model"], batch_contexts=batch_contexts)
    if record and record.get("fingerprint") != source.fingerprint:  # another model, corpus or packing
        raise ValueError(
            f"{source.name} holds other activations (fingerprint {source.fingerprint[:12]}) than the SAE "
            f"on {sae.cfg.hook_name} was trained on ({str(record.get('fingerprint'))[:12]})"
        )
    source.check_hooks(sae.cfg.hook_name)
    return source


def source_model(
    source: ActivationSource, model: Any = None, *, requested: str = "", device: Any = None
) -> Any:
    """``model`` (``requested`` names it in errors), else the source's own, else the model its provenance
    names, loaded on ``device``; refused unless the source's activations come from it."""
    from g2interp.loading import load_model

    if model is None:
        model = getattr(source, "model", None) or load_model(source.model_source, device=device)
    source.check_model(model, requested or source.model_source)
    return model


def _read_evaluation(folder: Path, source: ActivationSource) -> SAEEvaluation | None:
    """The evaluation an earlier run wrote for this SAE on this source, if any."""
    from g2interp.sae.evaluate import DeltaLossResult, SAEEvalResult

    try:
        evaluation = SAEEvaluation(SAEEvalResult.load(folder), DeltaLossResult.load(folder))
    except (OSError, ValueError, TypeError):
        return None
    return evaluation if evaluation.eval.source_fingerprint == source.fingerprint else None
