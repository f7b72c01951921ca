"""Train one JumpReLU SAE on a model's activations and evaluate it: the engine of ``g2interp train-sae``.

``train_sae(TrainSAEConfig(...))`` packs the corpus into contexts, holds some out, streams (or captures
once and replays) the hook's activations into :class:`~g2interp.sae.trainer.SAETrainer`, then scores
the SAE on the held-out contexts: :func:`~g2interp.sae.evaluate.evaluate_sae` on their activations and
:func:`~g2interp.sae.evaluate.delta_lm_loss` with the SAE spliced in. The output folder holds

    train_sae.json      the run's config
    metrics.jsonl       training metrics every ``log_every`` steps
    step_*/ latest.json resumable checkpoints (re-running the same command resumes)
    sae_0/              the SAE (cfg.json + sae_weights.safetensors + sparsity.safetensors, SAELens's
                        layout) with eval.json and delta_lm_loss.json beside its weights
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from g2interp.constants import EMBEDDED_MODEL
from g2interp.loading.files import atomic_write_text
from g2interp.sae.constants import FINAL_SAE_DIR_TEMPLATE
from g2interp.sae.data import (
    CorpusError,
    ReplayBatches,
    SplitContexts,
    activation_rows,
    capture_rows,
    keep_mask,
    pack_contexts,
    read_texts,
    shuffled_batches,
    split_contexts,
)
from g2interp.sae.distributed import DataParallel
from g2interp.sae.evaluate import DeltaLossResult, SAEEvalResult, delta_lm_loss, evaluate_sae
from g2interp.sae.sae import JumpReLUSAE
from g2interp.sae.trainer import SAETrainer
from g2interp.sae.training import SAETrainingConfig, make_saes

logger = logging.getLogger(__name__)

#: Where the demo corpus lives on the development machines (JSONL files, field ``text``).
DEFAULT_CORPUS = "/work/shared/data/corpus"
#: Run config written into the output folder.
RUN_CONFIG_FILE = "train_sae.json"


@dataclass(frozen=True)
class TrainSAEConfig:
    """One SAE training run on a model's activations: data, model, output, and the trainer's settings."""

    out: str
    """Output folder: checkpoints, metrics log, and the SAE in ``sae_0/`` with its evaluation JSON."""
    training: SAETrainingConfig
    """SAE and optimiser settings; its ``d_in`` is the hook's width and ``total_tokens`` the tokens
    trained on (counting repeats when ``epochs > 1``)."""
    source: str = EMBEDDED_MODEL
    """Model: the embedded Gemma 3 270M, a Hugging Face folder, a .gguf file or a cached hub id."""
    hook_name: str = "blocks.6.hook_resid_post"
    """Hook whose activations the SAE reads (``blocks.L.hook_resid_post``, ``blocks.L.attn.hook_z``,
    ``blocks.L.hook_mlp_out``, ...)."""
    corpus: str = DEFAULT_CORPUS
    """A JSONL file or a folder of them."""
    text_field: str = "text"
    """JSON field holding each document's text."""
    context_length: int = 1024
    """Tokens per context, BOS included (Gemma Scope: 1024)."""
    epochs: int = 1
    """1: activations are captured on the fly and mixed in a shuffle buffer, every token seen once.
    k > 1: ``total_tokens / k`` tokens are captured once, kept in memory and replayed k times in fresh
    orders (the cheap way when the model, not the SAE, is the bottleneck)."""
    batch_contexts: int = 8
    """Contexts per forward pass of the model while capturing."""
    buffer_batches: int = 16
    """Shuffle buffer of the streaming mode, in batches."""
    eval_contexts: int = 32
    """Contexts held out (never trained on); ``evaluate_sae`` reads all their activations."""
    delta_loss_contexts: int = 4
    """How many of the held-out contexts the delta-loss evaluation runs the whole model on (three
    forward passes each: clean, SAE spliced in, zero-ablated)."""
    eval_batch_contexts: int = 1
    """Contexts per forward pass of the delta-loss evaluation (its logits are contexts x length x vocab)."""
    data_seed: int = 0
    """Seed of the context order, the held-out split and the batch shuffles."""
    device: str | None = None
    """Device of the model and the SAE (default: CUDA when available)."""
    dtype: str | None = None
    """Model dtype (default: bfloat16 on CUDA, float32 on CPU); the SAE trains in float32."""

    def __post_init__(self) -> None:
        if self.training.hook_name != self.hook_name:
            raise ValueError(
                f"training.hook_name {self.training.hook_name!r} differs from hook_name {self.hook_name!r}"
            )
        for name in (
            "context_length",
            "epochs",
            "batch_contexts",
            "eval_contexts",
            "delta_loss_contexts",
            "eval_batch_contexts",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {self.context_length}")
        if self.delta_loss_contexts > self.eval_contexts:
            raise ValueError(
                f"delta_loss_contexts ({self.delta_loss_contexts}) exceeds eval_contexts ({self.eval_contexts})"
            )
        if self.buffer_batches < 2:
            raise ValueError(f"buffer_batches must be >= 2, got {self.buffer_batches}")
        if not self.out:
            raise ValueError("out (the output folder) is required")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["training"] = self.training.to_dict()
        return out


class TrainSAEResult(NamedTuple):
    """What :func:`train_sae` produced (evaluations on rank 0 only)."""

    sae_dir: Path
    """Folder of the trained SAE."""
    sae: JumpReLUSAE
    """The trained SAE (input scale folded in)."""
    eval: SAEEvalResult | None
    """Reconstruction and sparsity on the held-out contexts' activations."""
    delta_loss: DeltaLossResult | None
    """LM loss with the SAE spliced in, on the held-out contexts."""
    seconds: float
    """Wall time of the whole run."""


def prepare_contexts(
    tokenizer: Any,
    corpus: str | Path,
    *,
    context_length: int,
    eval_contexts: int,
    text_field: str = "text",
    seed: int = 0,
) -> SplitContexts:
    """The whole corpus packed into contexts, shuffled, the first ``eval_contexts`` held out."""
    texts = read_texts(corpus, text_field)
    contexts = pack_contexts(tokenizer, texts, context_length)
    logger.info(
        "corpus %s: %d documents -> %d contexts of %d tokens",
        corpus,
        len(texts),
        len(contexts),
        context_length,
    )
    return split_contexts(contexts, eval_contexts, seed)


def excluded_ids(tokenizer: Any) -> tuple[int, ...]:
    """Token ids whose activations are not trained on: BOS and EOS (Gemma Scope's exclusions)."""
    return tuple(dict.fromkeys((tokenizer.bos_token_id, tokenizer.eos_token_id)))


def contexts_for_rows(contexts: Tensor, n_rows: int, exclude_ids: Sequence[int]) -> Tensor:
    """The fewest leading contexts that hold at least ``n_rows`` kept tokens."""
    kept = keep_mask(contexts, exclude_ids).sum(1).cumsum(0)
    if kept.numel() == 0 or int(kept[-1]) < n_rows:
        have = 0 if kept.numel() == 0 else int(kept[-1])
        raise CorpusError(
            f"{len(contexts)} contexts hold {have} usable tokens; {n_rows} are needed "
            f"(use a larger corpus, fewer tokens, or more epochs)"
        )
    return contexts[: int(torch.searchsorted(kept, n_rows)) + 1]


@torch.no_grad()
def evaluate_on_contexts(
    model: Any,
    sae: JumpReLUSAE,
    contexts: Tensor,
    *,
    exclude_ids: Sequence[int],
    batch_contexts: int = 8,
    delta_loss_contexts: int | None = None,
    eval_batch_contexts: int = 1,
    ce_clean: float | None = None,
) -> tuple[SAEEvalResult, DeltaLossResult]:
    """``evaluate_sae`` on the contexts' kept activations and ``delta_lm_loss`` on the tokens of the
    first ``delta_loss_contexts`` of them (all by default; ``ce_clean`` must be of those)."""
    hook = sae.cfg.hook_name
    device = sae.W_enc.device
    rows = (
        chunk[hook]
        for chunk in activation_rows(
            model, contexts, [hook], batch_contexts=batch_contexts, exclude_ids=exclude_ids, device=device
        )
    )
    result = evaluate_sae(sae, rows)
    scored = contexts[:delta_loss_contexts] if delta_loss_contexts else contexts
    delta = delta_lm_loss(model, sae, scored.to(device), batch_size=eval_batch_contexts, ce_clean=ce_clean)
    return result, delta


def train_sae(
    cfg: TrainSAEConfig,
    *,
    model: Any = None,
    parallel: DataParallel | None = None,
    progress: bool = True,
) -> TrainSAEResult:
    """Train and evaluate one SAE as ``cfg`` says; resumes from ``cfg.out`` if it holds a checkpoint."""
    start_time = time.perf_counter()
    if model is None:
        from g2interp.loading import load_model

        model = load_model(cfg.source, device=cfg.device, dtype=cfg.dtype)
    is_main = parallel is None or parallel.is_main
    rank, world = (0, 1) if parallel is None else (parallel.rank, parallel.world_size)
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RUN_CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
    tcfg = cfg.training
    device = model.device
    exclude = excluded_ids(model.tokenizer)
    split = prepare_contexts(
        model.tokenizer,
        cfg.corpus,
        context_length=cfg.context_length,
        eval_contexts=cfg.eval_contexts,
        text_field=cfg.text_field,
        seed=cfg.data_seed,
    )
    local_batch = tcfg.batch_size // world
    my_contexts = split.train[rank::world]
    if cfg.epochs == 1:
        # every step's rows once, plus one batch of slack for the buffer's dropped remainder
        n_rows = (tcfg.total_steps + 1) * local_batch
        contexts = contexts_for_rows(my_contexts, n_rows, exclude)

        def stream() -> Iterator[Tensor]:
            rows = activation_rows(
                model,
                contexts,
                [cfg.hook_name],
                batch_contexts=cfg.batch_contexts,
                exclude_ids=exclude,
                device=device,
            )
            mixed = shuffled_batches(
                rows, local_batch, buffer_batches=cfg.buffer_batches, seed=cfg.data_seed + rank
            )
            return (batch[cfg.hook_name] for batch in mixed)

        def batches(start: int) -> Iterator[Tensor]:  # a resumed run recomputes the skipped batches
            return itertools.islice(stream(), start, None)

        logger.info(
            "streaming %d contexts for %d steps of %d rows", len(contexts), tcfg.total_steps, local_batch
        )
    else:
        n_rows = math.ceil(tcfg.total_steps / cfg.epochs) * local_batch
        contexts = contexts_for_rows(my_contexts, n_rows, exclude)
        t0 = time.perf_counter()
        rows = capture_rows(
            model,
            contexts,
            [cfg.hook_name],
            n_rows,
            batch_contexts=cfg.batch_contexts,
            exclude_ids=exclude,
            device=device,
        )[cfg.hook_name]
        logger.info(
            "rank %d: captured %d rows from %d contexts in %.1f s",
            rank,
            n_rows,
            len(contexts),
            time.perf_counter() - t0,
        )
        batches = ReplayBatches(rows, local_batch, seed=cfg.data_seed + rank)
    saes = [sae.to(device) for sae in make_saes(tcfg)]
    trainer = SAETrainer(
        tcfg,
        saes,
        batches,
        checkpoint_dir=out,
        metrics_log=out / "metrics.jsonl",
        progress=progress,
        parallel=parallel,
    )
    sae = trainer.fit()[0]
    sae_dir = out / FINAL_SAE_DIR_TEMPLATE.format(index=0)
    result, delta = None, None
    if is_main:
        result, delta = evaluate_on_contexts(
            model,
            sae,
            split.eval,
            exclude_ids=exclude,
            batch_contexts=cfg.batch_contexts,
            delta_loss_contexts=cfg.delta_loss_contexts,
            eval_batch_contexts=cfg.eval_batch_contexts,
        )
        result.save(sae_dir)
        delta.save(sae_dir)
        logger.info(
            "%s: L0 %.1f, FVU %.3f, dead %.1f%%, CE %.4f -> %.4f (zero %.4f), loss recovered %.3f",
            cfg.hook_name,
            result.l0,
            result.fvu,
            100 * result.dead_fraction,
            delta.ce_clean,
            delta.ce_sae,
            delta.ce_zero,
            delta.fraction_recovered,
        )
    return TrainSAEResult(sae_dir, sae, result, delta, time.perf_counter() - start_time)
