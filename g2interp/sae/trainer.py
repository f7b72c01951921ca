"""SAETrainer: batches in, callbacks out; resumable bit for bit from its checkpoints.

The trainer never sees a language model. It takes activation batches ``[batch_size, d_in]`` from either

* a callable ``batches_from(step) -> Iterable[Tensor]`` that yields batches starting at batch ``step``
  (preferred: a resumed run opens the stream where it left off), or
* an iterable, which a resumed run re-iterates from the start, skipping the batches already trained on.

Either way the stream must yield the same batches in the same order every time it is opened.
Batch ``i`` is trained on at step ``i``; the first ``n_norm_batches`` also set the input scale.

Data-parallel (``parallel=DataParallel(...)``, see :mod:`g2interp.sae.distributed`): each rank's stream
yields its own ``batch_size // world_size`` rows of every global batch; gradients, firing counts and
metrics are summed over the ranks, and only rank 0 writes checkpoints, logs and the final SAEs.

A checkpoint (every ``checkpoint_every`` steps, and at the end) is a folder ``step_000001000/`` with
``trainer_state.safetensors`` (weights, Adam moments, firing counters, torch RNG) and
``trainer_state.json`` (step, input scale, config); it is written under a temporary name and renamed,
then ``latest.json`` is replaced atomically, so a killed run always finds its last complete checkpoint.
A trainer built with the same arguments resumes from it and ends bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from g2interp.loading.files import atomic_write_bytes, atomic_write_text
from g2interp.sae.constants import (
    CHECKPOINT_DIR_TEMPLATE,
    CHECKPOINT_LATEST_FILE,
    CHECKPOINT_STATE_FILE,
    CHECKPOINT_TENSORS_FILE,
    FINAL_SAE_DIR_TEMPLATE,
    SAE_SPARSITY_FILE,
)
from g2interp.sae.distributed import DataParallel
from g2interp.sae.sae import JumpReLUSAE
from g2interp.sae.training import (
    JumpReLUTrainingSAE,
    L0Steer,
    SAETrainingConfig,
    StepStats,
    init_from_data,
    l0_coefficient_at,
    learning_rate,
    loss_and_grads,
    make_saes,
    steer_l0_coefficient,
)

logger = logging.getLogger(__name__)

BatchSource = Iterable[Tensor] | Callable[[int], Iterable[Tensor]]
CHECKPOINT_FORMAT = 1
#: Config fields a resumed run may change: they do not touch the numbers.
_RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoints", "log_every")


class NonFiniteError(FloatingPointError):
    """A batch (or the loss it produced) holds NaN or inf; the last good checkpoint is left in place."""


class CheckpointMismatchError(ValueError):
    """A checkpoint folder belongs to a run with other settings."""


class SAEMetrics(NamedTuple):
    """One SAE's numbers at one step (on the scaled inputs it trains on)."""

    l0_coefficient: float
    """λ used this step (after warm-up)."""
    loss: float
    """``mse + λ·l0``."""
    mse: float
    """Squared error summed over features, averaged over tokens."""
    l0: float
    """Active latents per token."""
    fvu: float
    """Fraction of variance unexplained on the batch."""
    dead_fraction: float
    """Latents that fired on no token in the last ``dead_window_steps`` steps."""
    sparse: bool
    """Whether the sparse kernels ran."""


class StepMetrics(NamedTuple):
    """What callbacks receive after each step."""

    step: int
    """Steps completed."""
    tokens: int
    """Tokens trained on."""
    lr: float
    """Learning rate used this step."""
    saes: tuple[SAEMetrics, ...]
    """Per SAE, in the order given to the trainer."""


Callback = Callable[["SAETrainer", StepMetrics], None]


def _param_groups(sae: JumpReLUTrainingSAE, threshold_lr_scale: float) -> list[dict[str, Any]]:
    """Adam groups in ``named_parameters`` order (checkpoints index moments by that order): the
    log-thresholds, last, learn at ``threshold_lr_scale`` times the learning rate."""
    names = [name for name, _ in sae.named_parameters()]
    assert names[-1] == "log_threshold", names
    params = list(sae.parameters())
    return [
        {"params": params[:-1], "lr_scale": 1.0},
        {"params": params[-1:], "lr_scale": threshold_lr_scale},
    ]


class SAETrainer:
    """Train one or several JumpReLU SAEs (e.g. an L0-coefficient sweep) on the same batches."""

    def __init__(
        self,
        cfg: SAETrainingConfig,
        saes: JumpReLUTrainingSAE | Sequence[JumpReLUTrainingSAE] | None,
        batches: BatchSource,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        *,
        metrics_log: str | Path | None = None,
        progress: bool = True,
        parallel: DataParallel | None = None,
    ):
        self.cfg = cfg
        self.parallel = parallel if parallel is not None and parallel.world_size > 1 else None
        self.is_main = self.parallel is None or self.parallel.is_main
        #: Rows of each batch this process trains on (``batch_size`` unless data-parallel).
        self.local_batch_size = (
            cfg.batch_size if self.parallel is None else self.parallel.local_batch_size(cfg.batch_size)
        )
        if saes is None:
            saes = make_saes(cfg)
        self.saes = [saes] if isinstance(saes, JumpReLUTrainingSAE) else list(saes)
        if not self.saes:
            raise ValueError("no SAEs to train")
        for i, sae in enumerate(self.saes):
            if (sae.d_in, sae.d_sae) != (cfg.d_in, cfg.d_sae):
                raise ValueError(f"SAE {i} is {sae.d_in}x{sae.d_sae}; the config says {cfg.d_in}x{cfg.d_sae}")
        self.batches = batches
        self.callbacks = list(callbacks)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.metrics_log = None if metrics_log is None else Path(metrics_log)
        self.progress = progress and self.is_main
        self.optimizers = [
            torch.optim.Adam(
                _param_groups(sae, cfg.threshold_lr_scale),
                lr=cfg.lr,
                betas=cfg.adam_betas,
                eps=cfg.adam_eps,
                fused=True,
            )
            for sae in self.saes
        ]
        self.device = self.saes[0].W_enc.device
        if any(sae.W_enc.device != self.device for sae in self.saes):
            raise ValueError("all SAEs of a sweep must live on one device")
        counters = dict(size=(cfg.d_sae,), dtype=torch.int64, device=self.device)
        self.step = 0
        self.input_scale: float | None = None
        self.steps_since_fired = [torch.zeros(**counters) for _ in self.saes]
        self.window_fired = [torch.zeros(**counters) for _ in self.saes]
        self.window_steps = 0
        self.previous_window_fired = [torch.zeros(**counters) for _ in self.saes]
        self.previous_window_steps = 0
        self.last_checkpoint: Path | None = None
        #: λ of each SAE steered towards ``cfg.target_l0`` (unused without a target).
        self.l0_steer = [L0Steer(sae.l0_coefficient, math.nan) for sae in self.saes]

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[JumpReLUSAE]:
        """Train to ``cfg.total_steps`` (resuming from ``checkpoint_dir`` if it holds a checkpoint) and
        return the inference SAEs, input scale folded; with a checkpoint folder, also save them there."""
        cfg = self.cfg
        if self.checkpoint_dir is not None:
            self.resume()
            if self.parallel is not None:  # no rank writes a checkpoint before every rank has read one
                self.parallel.barrier()
        done = self.step >= cfg.total_steps  # a finished run re-run: nothing to read
        batches = iter(()) if done else self._open_batches(self.step)
        if self.input_scale is None:
            batches = self._estimate_input_scale(batches)
        pbar = tqdm(total=cfg.total_steps, initial=self.step, unit="step", disable=not self.progress)
        try:
            while self.step < cfg.total_steps:
                metrics = self.train_step(self._next_batch(batches))
                pbar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                    self._log(metrics, pbar)
                for callback in self.callbacks:
                    callback(self, metrics)
                if (
                    self.checkpoint_dir is not None
                    and cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                ):
                    self.save_checkpoint()
        finally:
            pbar.close()
        if self.checkpoint_dir is not None:
            self.save_checkpoint()
        final = self.inference_saes()
        if self.checkpoint_dir is not None and self.is_main:
            for i, sae in enumerate(final):
                self._save_final(sae, i)
        if self.parallel is not None:  # every rank returns once the final SAEs are on disk
            self.parallel.barrier()
        return final

    def train_step(self, x: Float[Tensor, "batch d_in"]) -> StepMetrics:
        """One optimiser step of every SAE on one raw batch."""
        cfg = self.cfg
        if self.input_scale is None:
            raise RuntimeError("input scale not set: call fit(), or set trainer.input_scale first")
        # Data-parallel ranks must all raise on a bad batch, so its check waits for the reduction.
        x_BD = self._check_batch(x, self.step, raise_nonfinite=self.parallel is None) * self.input_scale
        lr = learning_rate(cfg, self.step)
        if cfg.target_l0 > 0:
            coefs = [steer.coefficient for steer in self.l0_steer]
        else:
            coefs = [
                l0_coefficient_at(sae.l0_coefficient, cfg.l0_warmup_steps, self.step) for sae in self.saes
            ]
        # All gradients before any update, so a non-finite loss leaves every SAE untouched.
        stats: list[StepStats] = []
        for sae, coef in zip(self.saes, coefs, strict=True):
            stats.append(loss_and_grads(sae, x_BD, coef, cfg.sparse_below))
            if self.parallel is None:
                self._check_loss(stats[-1], len(stats) - 1)
        if self.parallel is not None:
            stats = self._all_reduce(x_BD, stats, coefs)
            for i, st in enumerate(stats):
                self._check_loss(st, i)
        for sae, opt in zip(self.saes, self.optimizers, strict=True):
            sae.project_decoder_grad()
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            opt.step()
            sae.normalise_decoder()
        self.step += 1
        self.window_steps += 1
        reset_window = self.window_steps >= cfg.dead_window_steps
        out = []
        for i, (st, coef) in enumerate(zip(stats, coefs, strict=True)):
            since = self.steps_since_fired[i]
            since.add_(1).masked_fill_(st.fired_F > 0, 0)
            dead = float((since >= cfg.dead_window_steps).sum()) / cfg.d_sae
            self.window_fired[i].add_(st.fired_F)
            out.append(SAEMetrics(coef, st.loss, st.mse, st.l0, st.fvu, dead, st.sparse))
            if cfg.target_l0 > 0:
                self.l0_steer[i] = steer_l0_coefficient(cfg, self.l0_steer[i], st.l0)
        if reset_window:  # keep the finished window's counts for feature_density()
            for fired, previous in zip(self.window_fired, self.previous_window_fired, strict=True):
                previous.copy_(fired)
                fired.zero_()
            self.previous_window_steps, self.window_steps = self.window_steps, 0
        return StepMetrics(self.step, self.step * cfg.batch_size, lr, tuple(out))

    def _check_loss(self, st: StepStats, index: int) -> None:
        if not math.isfinite(st.loss):
            raise NonFiniteError(
                f"loss is {st.loss} at step {self.step} (SAE {index}); "
                f"last good checkpoint: {self.last_checkpoint or 'none'}"
            )

    def _all_reduce(self, x_BD: Tensor, stats: list[StepStats], coefs: list[float]) -> list[StepStats]:
        """Average the gradients over the ranks and turn per-rank sums into global batch statistics.

        Each rank's gradient is of the mean loss over its ``b`` rows; with equal slices, their mean is
        the gradient of the mean over all ``world_size · b`` rows.
        """
        assert self.parallel is not None
        world, B_local = self.parallel.world_size, x_BD.shape[0]
        x64_BD = x_BD.double()
        sums = [
            torch.tensor(
                [float(not bool(torch.isfinite(x_BD).all()))], dtype=torch.float64, device=self.device
            ),
            (x64_BD * x64_BD).sum().reshape(1),
            x64_BD.sum(0),
        ]
        for st in stats:
            sums.append(
                torch.tensor([st.mse * B_local, st.l0 * B_local], dtype=torch.float64, device=self.device)
            )
            sums.append(st.fired_F.to(torch.float64))
        vec = torch.cat(sums)
        grads = [p.grad for sae in self.saes for p in sae.parameters()]
        self.parallel.all_reduce_sum([*grads, vec])
        for grad in grads:
            grad.div_(world)
        if vec[0] > 0:
            raise NonFiniteError(
                f"batch at step {self.step} holds NaN or inf (on {int(vec[0])} rank(s)); "
                f"last good checkpoint: {self.last_checkpoint or 'none'}"
            )
        D, F, B = self.cfg.d_in, self.cfg.d_sae, B_local * world
        sum_sq_x, sum_x_D = float(vec[1]), vec[2 : 2 + D]
        total_var = sum_sq_x - float(sum_x_D @ sum_x_D) / B
        out, offset = [], 2 + D
        for st, coef in zip(stats, coefs, strict=True):
            sq_err, active = float(vec[offset]), float(vec[offset + 1])
            fired_F = vec[offset + 2 : offset + 2 + F].round().to(torch.int64)
            offset += 2 + F
            fvu = sq_err / total_var if total_var > 0 else float("nan")
            out.append(
                StepStats(sq_err / B + coef * active / B, sq_err / B, active / B, fvu, fired_F, st.sparse)
            )
        return out

    # ------------------------------------------------------------------ batches
    def _open_batches(self, start: int) -> Iterator[Tensor]:
        source = self.batches
        if callable(source) and not isinstance(source, Iterable):
            return iter(source(start))
        stream = iter(source)
        if start:
            logger.info("resuming at step %d: skipping the %d batches already trained on", start, start)
            for i in range(start):
                if next(stream, None) is None:
                    raise ValueError(
                        f"the batch stream ended after {i} batches while skipping to step {start}"
                    )
        return stream

    def _next_batch(self, batches: Iterator[Tensor]) -> Tensor:
        batch = next(batches, None)
        if batch is None:
            raise ValueError(
                f"the batch stream ended at step {self.step}; the run needs {self.cfg.total_steps} batches "
                f"({self.cfg.total_tokens} tokens)"
            )
        return batch

    def _check_batch(self, x: Tensor, step_index: int, raise_nonfinite: bool = True) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"batch at step {step_index} is a {type(x).__name__}, expected a torch.Tensor")
        expected = (self.local_batch_size, self.cfg.d_in)
        if tuple(x.shape) != expected:
            raise ValueError(f"batch at step {step_index} has shape {tuple(x.shape)}, expected {expected}")
        x = x.to(device=self.device, dtype=torch.float32)
        if raise_nonfinite and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                f"batch at step {step_index} holds NaN or inf; "
                f"last good checkpoint: {self.last_checkpoint or 'none'}"
            )
        return x

    def _estimate_input_scale(self, batches: Iterator[Tensor]) -> Iterator[Tensor]:
        """Set the scale that gives the first batches unit mean squared norm; re-queue those batches."""
        cfg = self.cfg
        n = min(cfg.n_norm_batches, cfg.total_steps)
        head = []
        # float64 sums: [squared norms, rows, per-batch non-finite flags, per-feature sums]
        sums = torch.zeros(2 + n + cfg.d_in, dtype=torch.float64, device=self.device)
        for i in range(n):
            batch = self._next_batch(batches)
            x = self._check_batch(batch, i, raise_nonfinite=self.parallel is None).double()
            sums[2 + i] = float(not bool(torch.isfinite(x).all()))
            sums[0] += torch.dot(x.view(-1), x.view(-1))
            sums[1] += x.shape[0]
            sums[2 + n :] += x.sum(0)
            head.append(batch)
        if self.parallel is not None:
            self.parallel.all_reduce_sum([sums])
            bad = torch.nonzero(sums[2 : 2 + n]).flatten().tolist()
            if bad:
                raise NonFiniteError(f"batch at step {bad[0]} holds NaN or inf; last good checkpoint: none")
        sum_sq, count = float(sums[0]), float(sums[1])
        if sum_sq <= 0:
            raise ValueError("the first batches are all zero; cannot set the input scale")
        # Fixed scalar so that E‖x·s‖² = 1; folded into the weights when the SAEs are saved.
        self.input_scale = float(1.0 / math.sqrt(sum_sq / count))
        if self.is_main:
            logger.info(
                "input scale %.6g from %d batches (mean squared norm %.6g)",
                self.input_scale,
                n,
                sum_sq / count,
            )
        if cfg.b_dec_init == "mean" or cfg.target_l0 > 0:
            mean_D = (sums[2 + n :] / count * self.input_scale).float() if cfg.b_dec_init == "mean" else None
            first_BD = self._check_batch(head[0], 0) * self.input_scale
            if self.parallel is not None:  # the whole first batch, as one process would see it
                first_BD = self.parallel.all_gather_rows(first_BD)
            for sae in self.saes:
                init_from_data(
                    sae,
                    mean_D=mean_D,
                    first_batch_BD=first_BD,
                    target_l0=cfg.target_l0,
                    min_threshold=cfg.threshold_init,
                )
            if cfg.target_l0 > 0 and self.is_main:
                logger.info("thresholds set for L0 ≈ %g on the first batch", cfg.target_l0)
        return itertools.chain(head, batches)

    # ------------------------------------------------------------------ results
    def inference_saes(self) -> list[JumpReLUSAE]:
        """Inference copies of the SAEs as they stand, input scale folded into the weights."""
        if self.input_scale is None:
            raise RuntimeError("no input scale yet: the trainer has not seen a batch")
        out = []
        for i, sae in enumerate(self.saes):
            since = self.steps_since_fired[i]
            steered = self.cfg.target_l0 > 0
            metadata = {
                "trained_with": "g2interp",
                # with a target L0, λ was steered from the SAE's own start to this
                "l0_coefficient": self.l0_steer[i].coefficient if steered else sae.l0_coefficient,
                **(
                    {"target_l0": self.cfg.target_l0, "l0_coefficient_start": sae.l0_coefficient}
                    if steered
                    else {}
                ),
                "bandwidth": sae.bandwidth,
                "training_tokens": self.step * self.cfg.batch_size,
                "input_scale_folded": self.input_scale,
                "dead_fraction": float((since >= self.cfg.dead_window_steps).sum()) / self.cfg.d_sae,
            }
            out.append(
                sae.to_inference(
                    input_scale=self.input_scale,
                    hook_name=self.cfg.hook_name,
                    model_name=self.cfg.model_name,
                    metadata=metadata,
                    reshape_hook_z=self.cfg.reshape_hook_z,
                )
            )
        return out

    def feature_density(self, index: int = 0) -> Tensor:
        """Firing frequency per latent over the last complete window (or the current one)."""
        if self.window_steps or not self.previous_window_steps:
            return self.window_fired[index].double() / max(1, self.window_steps * self.cfg.batch_size)
        return self.previous_window_fired[index].double() / (self.previous_window_steps * self.cfg.batch_size)

    def _save_final(self, sae: JumpReLUSAE, index: int) -> None:
        assert self.checkpoint_dir is not None
        folder = sae.save(self.checkpoint_dir / FINAL_SAE_DIR_TEMPLATE.format(index=index))
        log_density = torch.log10(self.feature_density(index).float() + 1e-10)  # SAELens's sparsity file
        atomic_write_bytes(folder / SAE_SPARSITY_FILE, safetensors_bytes({"sparsity": log_density}))

    # ------------------------------------------------------------------ logging
    def _log(self, metrics: StepMetrics, pbar: Any) -> None:
        if not self.is_main:
            return
        parts = [
            f"sae{i} λ={m.l0_coefficient:.3g} loss={m.loss:.4g} mse={m.mse:.4g} L0={m.l0:.1f} "
            f"fvu={m.fvu:.3f} dead={m.dead_fraction:.3f}"
            for i, m in enumerate(metrics.saes)
        ]
        logger.info(
            "step %d/%d tokens=%d lr=%.3g | %s",
            metrics.step,
            self.cfg.total_steps,
            metrics.tokens,
            metrics.lr,
            " | ".join(parts),
        )
        first = metrics.saes[0]
        pbar.set_postfix(L0=f"{first.l0:.1f}", fvu=f"{first.fvu:.3f}", refresh=False)
        if self.metrics_log is not None:
            record = {
                "step": metrics.step,
                "tokens": metrics.tokens,
                "lr": metrics.lr,
                "saes": [m._asdict() for m in metrics.saes],
            }
            self.metrics_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_log, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_metrics_log(self) -> None:
        """Drop log lines past the resumed step (they are logged again)."""
        if self.metrics_log is None or not self.metrics_log.is_file() or not self.is_main:
            return
        lines = self.metrics_log.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by the kill
        atomic_write_text(self.metrics_log, "".join(k + "\n" for k in kept))

    # ------------------------------------------------------------------ checkpoints
    def _state_tensors(self) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
        for i, (sae, opt) in enumerate(zip(self.saes, self.optimizers, strict=True)):
            for name, param in sae.named_parameters():
                tensors[f"sae{i}.{name}"] = param.detach()
                for key, value in opt.state.get(param, {}).items():
                    tensors[f"sae{i}.adam.{name}.{key}"] = value
            tensors[f"sae{i}.steps_since_fired"] = self.steps_since_fired[i]
            tensors[f"sae{i}.window_fired"] = self.window_fired[i]
            tensors[f"sae{i}.previous_window_fired"] = self.previous_window_fired[i]
        return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def _state_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "tokens": self.step * self.cfg.batch_size,
            "batches_consumed": self.step,
            "input_scale": self.input_scale,
            "window_steps": self.window_steps,
            "previous_window_steps": self.previous_window_steps,
            "l0_coefficients": [sae.l0_coefficient for sae in self.saes],
            "l0_steer": [
                [steer.coefficient, steer.log_l0_ema if math.isfinite(steer.log_l0_ema) else None]
                for steer in self.l0_steer
            ],
            "bandwidths": [sae.bandwidth for sae in self.saes],
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write the full training state for the current step (atomically); prune old checkpoints."""
        if self.checkpoint_dir is None:
            raise ValueError("the trainer has no checkpoint_dir")
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        final = root / CHECKPOINT_DIR_TEMPLATE.format(step=self.step)
        if final.is_dir() and self.last_checkpoint == final:
            return final
        if not self.is_main:  # data-parallel: rank 0 writes, every rank knows where
            self.last_checkpoint = final
            return final
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        atomic_write_bytes(tmp / CHECKPOINT_TENSORS_FILE, safetensors_bytes(self._state_tensors()))
        atomic_write_text(tmp / CHECKPOINT_STATE_FILE, json.dumps(self._state_json(), indent=2) + "\n")
        if final.exists():  # a stale folder of this step from a run that never pointed latest.json at it
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(
            root / CHECKPOINT_LATEST_FILE, json.dumps({"step": self.step, "dir": final.name}) + "\n"
        )
        self.last_checkpoint = final
        logger.info("checkpoint at step %d: %s", self.step, final)
        self._prune_checkpoints()
        return final

    def _prune_checkpoints(self) -> None:
        assert self.checkpoint_dir is not None
        folders = sorted(p for p in self.checkpoint_dir.glob("step_*") if p.is_dir())
        for old in folders[: -self.cfg.keep_checkpoints]:
            if old != self.last_checkpoint:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        """Load the newest complete checkpoint in ``checkpoint_dir``, if any; True if one was loaded."""
        root = self.checkpoint_dir
        if root is None:
            return False
        for leftover in root.glob(".step_*.tmp-*") if self.is_main else ():  # cut short by a kill
            shutil.rmtree(leftover, ignore_errors=True)
        if not (root / CHECKPOINT_LATEST_FILE).is_file():
            return False
        latest = json.loads((root / CHECKPOINT_LATEST_FILE).read_text())
        folder = root / latest["dir"]
        state = json.loads((folder / CHECKPOINT_STATE_FILE).read_text())
        self._check_compatible(state, folder)
        tensors = load_file(folder / CHECKPOINT_TENSORS_FILE)
        with torch.no_grad():
            for i, (sae, opt) in enumerate(zip(self.saes, self.optimizers, strict=True)):
                opt_state: dict[int, dict[str, Tensor]] = {}
                for j, (name, param) in enumerate(sae.named_parameters()):
                    param.copy_(tensors[f"sae{i}.{name}"])
                    moments = {
                        key: tensors[f"sae{i}.adam.{name}.{key}"]
                        for key in ("step", "exp_avg", "exp_avg_sq")
                        if f"sae{i}.adam.{name}.{key}" in tensors
                    }
                    if moments:
                        opt_state[j] = moments
                opt.load_state_dict({"state": opt_state, "param_groups": opt.state_dict()["param_groups"]})
                self.steps_since_fired[i] = tensors[f"sae{i}.steps_since_fired"].to(self.device)
                self.window_fired[i] = tensors[f"sae{i}.window_fired"].to(self.device)
                self.previous_window_fired[i] = tensors[f"sae{i}.previous_window_fired"].to(self.device)
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(state["step"])
        self.input_scale = float(state["input_scale"])
        self.window_steps = int(state["window_steps"])
        self.previous_window_steps = int(state["previous_window_steps"])
        steer = state.get("l0_steer") or [[c, None] for c in state["l0_coefficients"]]  # older checkpoints
        self.l0_steer = [L0Steer(float(coef), math.nan if ema is None else float(ema)) for coef, ema in steer]
        self.last_checkpoint = folder
        self._truncate_metrics_log()
        logger.info("resumed from %s at step %d", folder, self.step)
        return True

    def _check_compatible(self, state: dict[str, Any], folder: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(
                f"{folder}: checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}"
            )
        # fields added since the checkpoint was written count as their defaults
        defaults = {f.name: f.default for f in dataclasses.fields(SAETrainingConfig)}
        saved = {k: v for k, v in {**defaults, **state["config"]}.items() if k not in _RESUMABLE_CHANGES}
        current = {k: v for k, v in self.cfg.to_dict().items() if k not in _RESUMABLE_CHANGES}
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise CheckpointMismatchError(f"{folder} was written with other settings ({detail})")
        coefs = [sae.l0_coefficient for sae in self.saes]
        if state["l0_coefficients"] != coefs or state["bandwidths"] != [sae.bandwidth for sae in self.saes]:
            raise CheckpointMismatchError(
                f"{folder} holds SAEs with L0 coefficients {state['l0_coefficients']} and bandwidths "
                f"{state['bandwidths']}; this trainer has {coefs} and {[sae.bandwidth for sae in self.saes]}"
            )
