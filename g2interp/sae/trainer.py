"""SAETrainer: batches in, callbacks out; resumable bit for bit from its checkpoints.

The trainer never sees a language model, nor which architecture it trains: each training SAE writes its
own gradients (:class:`~g2interp.sae.training.TrainingSAE`). It takes activation batches
``[batch_size, d_in]`` (for a transcoder, ``(inputs, targets)`` pairs) from either

* a callable ``batches_from(step) -> Iterable[Tensor]`` that yields batches starting at batch ``step``
  (preferred: a resumed run opens the stream where it left off), or
* an iterable, which a resumed run re-iterates from the start, skipping the batches already trained on.

Either way the stream must yield the same batches in the same order every time it is opened.
Batch ``i`` is trained on at step ``i``; the first ``n_norm_batches`` also set the input scale (and a
transcoder's output scale) and the SAEs' data-dependent start.
:func:`train_together` feeds several trainers (one per hook, or a sweep of widths) from one stream of
dict batches, so one read of a store trains them all.

Data-parallel (``parallel=DataParallel(...)``, see :mod:`g2interp.distributed`): each rank's stream
yields its own ``batch_size // world_size`` rows of every global batch; gradients, firing counts and
metrics are summed over the ranks, and only rank 0 writes checkpoints, logs and the final SAEs. JumpReLU
runs equal one process on the whole batch; BatchTopK keeps the top ``k·b`` of each rank's ``b`` rows (equal
only in expectation) and its running threshold is averaged over the ranks after every step.
Checkpoints (every ``checkpoint_every`` steps, and at the end): :mod:`g2interp.sae.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from g2interp.distributed import DataParallel
from g2interp.files import atomic_write_bytes
from g2interp.sae.architectures import inference_sae, make_saes
from g2interp.sae.checkpoint import CheckpointMixin
from g2interp.sae.constants import FINAL_SAE_DIR_TEMPLATE, SAE_SPARSITY_FILE
from g2interp.sae.sae import JumpReLUSAE
from g2interp.sae.training import (
    SAETrainingConfig,
    StepInput,
    StepStats,
    TrainingSAE,
    l0_coefficient_at,
    learning_rate,
)

logger = logging.getLogger(__name__)

#: A batch: the activations [batch, d_in], or for a transcoder ``(inputs, targets)`` [batch, d_in], [batch, d_out].
Batch = Tensor | tuple[Tensor, Tensor]
BatchSource = Iterable[Batch] | Callable[[int], Iterable[Batch]]


class NonFiniteError(FloatingPointError):
    """A batch (or the loss it produced) holds NaN or inf; the last good checkpoint is left in place."""


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


class SAETrainer(CheckpointMixin):
    """Train one or several SAEs of one architecture (e.g. an L0-coefficient sweep) on the same batches."""

    def __init__(
        self,
        cfg: SAETrainingConfig,
        saes: TrainingSAE | Sequence[TrainingSAE] | None,
        batches: BatchSource | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        *,
        metrics_log: str | Path | None = None,
        progress: bool = True,
        parallel: DataParallel | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self.cfg = cfg
        #: Written into each saved SAE's ``metadata`` (e.g. where its activations come from).
        self.metadata = dict(metadata or {})
        self.parallel = parallel if parallel is not None and parallel.world_size > 1 else None
        self.is_main = self.parallel is None or self.parallel.is_main
        #: Rows of each batch this process trains on (``batch_size`` unless data-parallel).
        self.local_batch_size = (
            cfg.batch_size if self.parallel is None else self.parallel.local_batch_size(cfg.batch_size)
        )
        if saes is None:
            saes = make_saes(cfg)
        self.saes: list[Any] = [saes] if isinstance(saes, torch.nn.Module) else list(saes)
        if not self.saes:
            raise ValueError("no SAEs to train")
        for i, sae in enumerate(self.saes):
            if (sae.d_in, sae.d_sae, sae.d_out) != (cfg.d_in, cfg.d_sae, cfg.d_out):
                raise ValueError(
                    f"SAE {i} is {sae.d_in}x{sae.d_sae}x{sae.d_out} (d_in x d_sae x d_out); the config says "
                    f"{cfg.d_in}x{cfg.d_sae}x{cfg.d_out}"
                )
        self.batches = batches
        self.callbacks = list(callbacks)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.metrics_log = None if metrics_log is None else Path(metrics_log)
        self.progress = progress and self.is_main
        self.optimizers = [
            torch.optim.Adam(
                sae.parameters(),
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
        #: Scale of the reconstruction targets (the input scale, except for a transcoder).
        self.output_scale: float | None = None
        self.steps_since_fired = [torch.zeros(**counters) for _ in self.saes]
        self.window_fired = [torch.zeros(**counters) for _ in self.saes]
        self.window_steps = 0
        self.previous_window_fired = [torch.zeros(**counters) for _ in self.saes]
        self.previous_window_steps = 0
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[JumpReLUSAE]:
        """Train to ``cfg.total_steps`` (resuming from ``checkpoint_dir`` if it holds a checkpoint) and
        return the inference SAEs, input scale folded; with a checkpoint folder, also save them there."""
        return train_together([self], self.batches, progress=self.progress)[0]

    def begin(self) -> int:
        """Resume from ``checkpoint_dir`` when it holds a checkpoint; the index of the next batch wanted."""
        if self.checkpoint_dir is not None:
            self.resume()
            if self.parallel is not None:  # no rank writes a checkpoint before every rank has read one
                self.parallel.barrier()
        self._head: list[Tensor] = []
        #: Where this run started (equal to ``cfg.total_steps`` when an earlier run had finished it).
        self.step_at_start = self.step
        return self.next_batch

    @property
    def next_batch(self) -> int:
        """Index of the batch the trainer takes next (the first batches wait until the input scale is set)."""
        return self.step + len(getattr(self, "_head", ()))

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.total_steps

    def feed(self, batch: Batch) -> list[StepMetrics]:
        """Take the next batch: buffered until ``n_norm_batches`` set the input scale, then trained on."""
        if self.done:
            return []
        if self.input_scale is None:
            self._head.append(batch)
            if len(self._head) < min(self.cfg.n_norm_batches, self.cfg.total_steps):
                return []
            head, self._head = self._head, []
            self.set_input_scale(head)
            return [self._step(b) for b in head]
        return [self._step(batch)]

    def _step(self, batch: Batch) -> StepMetrics:
        cfg = self.cfg
        metrics = self.train_step(batch)
        if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
            self._log(metrics)
        for callback in self.callbacks:
            callback(self, metrics)
        if self.checkpoint_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return metrics

    def finish(self) -> list[JumpReLUSAE]:
        """The final checkpoint and inference SAEs (saved beside it on rank 0)."""
        if self.checkpoint_dir is not None:
            self.save_checkpoint()
        final = self.inference_saes()
        if self.checkpoint_dir is not None and self.is_main:
            for i, sae in enumerate(final):
                self._save_final(sae, i)
        if self.parallel is not None:  # every rank returns once the final SAEs are on disk
            self.parallel.barrier()
        return final

    def train_step(self, batch: Batch) -> StepMetrics:
        """One optimiser step of every SAE on one raw batch (``(inputs, targets)`` for a transcoder)."""
        cfg = self.cfg
        if self.input_scale is None or self.output_scale is None:
            raise RuntimeError("input scale not set: call fit(), or set trainer.input_scale first")
        # Data-parallel ranks must all raise on a bad batch, so its check waits for the reduction.
        x_BD, y_BO = self._check_batch(batch, self.step, raise_nonfinite=self.parallel is None)
        x_BD = x_BD * self.input_scale
        y_BO = x_BD if y_BO is None else y_BO * self.output_scale
        lr = learning_rate(cfg, self.step)
        coefs = [
            l0_coefficient_at(getattr(sae, "l0_coefficient", 0.0), cfg.l0_warmup_steps, self.step)
            for sae in self.saes
        ]
        # All gradients before any update, so a non-finite loss leaves every SAE untouched.
        stats: list[StepStats] = []
        for i, (sae, coef) in enumerate(zip(self.saes, coefs, strict=True)):
            dead_F = self.steps_since_fired[i] >= cfg.dead_window_steps
            stats.append(sae.loss_and_grads(StepInput(x_BD, y_BO, coef, dead_F, cfg.sparse_below)))
            if self.parallel is None:
                self._check_loss(stats[-1], len(stats) - 1)
        if self.parallel is not None:
            stats = self._all_reduce(x_BD, y_BO, stats)
            for i, st in enumerate(stats):
                self._check_loss(st, i)
        for sae, opt in zip(self.saes, self.optimizers, strict=True):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            sae.after_step()
            buffers = list(sae.buffers())
            if self.parallel is not None and buffers:
                # state updated from each rank's own rows (a running threshold): keep the ranks equal
                self.parallel.all_reduce_sum(buffers)
                for buffer in buffers:
                    buffer.div_(self.parallel.world_size)
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
        if reset_window:  # keep the finished window's counts for feature_density()
            for fired, previous in zip(self.window_fired, self.previous_window_fired, strict=True):
                previous.copy_(fired)
                fired.zero_()
            self.previous_window_steps, self.window_steps = self.window_steps, 0
        return StepMetrics(self.step, self.step * cfg.batch_size, lr, tuple(out))

    def _check_loss(self, st: StepStats, index: int) -> None:
        if not math.isfinite(st.loss):
            raise self._non_finite(f"loss is {st.loss} at step {self.step} (SAE {index})")

    def _non_finite(self, what: str) -> NonFiniteError:
        return NonFiniteError(f"{what}; last good checkpoint: {self.last_checkpoint or 'none'}")

    def _all_reduce(self, x_BD: Tensor, y_BO: Tensor, stats: list[StepStats]) -> list[StepStats]:
        """Average the gradients over the ranks and turn per-rank sums into global batch statistics.

        Each rank's gradient is of the mean loss over its ``b`` rows; with equal slices, their mean is
        the gradient of the mean over all ``world_size · b`` rows.
        """
        assert self.parallel is not None
        world, B_local = self.parallel.world_size, x_BD.shape[0]
        finite = bool(torch.isfinite(x_BD).all()) and bool(torch.isfinite(y_BO).all())
        y64_BO = y_BO.double()
        sums = [
            torch.tensor([float(not finite)], dtype=torch.float64, device=self.device),
            (y64_BO * y64_BO).sum().reshape(1),
            y64_BO.sum(0),
        ]
        for st in stats:
            extra = st.loss - st.mse  # the sparsity and auxiliary terms, means over the rank's rows
            sums.append(
                torch.tensor(
                    [st.mse * B_local, st.l0 * B_local, extra * B_local],
                    dtype=torch.float64,
                    device=self.device,
                )
            )
            sums.append(st.fired_F.to(torch.float64))
        vec = torch.cat(sums)
        grads = [p.grad for sae in self.saes for p in sae.parameters()]
        self.parallel.all_reduce_sum([*grads, vec])
        for grad in grads:
            grad.div_(world)
        if vec[0] > 0:
            raise self._non_finite(f"batch at step {self.step} holds NaN or inf (on {int(vec[0])} rank(s))")
        d_out, F, B = self.cfg.d_out, self.cfg.d_sae, B_local * world
        sum_sq_y, sum_y_O = float(vec[1]), vec[2 : 2 + d_out]
        total_var = sum_sq_y - float(sum_y_O @ sum_y_O) / B
        out, offset = [], 2 + d_out
        for st in stats:
            sq_err, active, extra = (float(v) for v in vec[offset : offset + 3])
            fired_F = vec[offset + 3 : offset + 3 + F].round().to(torch.int64)
            offset += 3 + F
            fvu = sq_err / total_var if total_var > 0 else float("nan")
            # the quadratic penalty is a mean over rows, so the ranks' means average exactly too
            out.append(StepStats((sq_err + extra) / B, sq_err / B, active / B, fvu, fired_F, st.sparse))
        return out

    # ------------------------------------------------------------------ batches
    def _open_batches(self, start: int, source: BatchSource | None = None) -> Iterator[Tensor]:
        source = self.batches if source is None else source
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

    def _check_batch(
        self, batch: Batch, step_index: int, raise_nonfinite: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """The batch's inputs and (transcoder) targets, shape-checked, float32 on the SAEs' device."""
        if self.cfg.is_transcoder:
            if not (isinstance(batch, tuple | list) and len(batch) == 2):
                raise TypeError(
                    f"batch at step {step_index}: a transcoder trains on (inputs, targets) pairs, "
                    f"got a {type(batch).__name__}"
                )
            x, y = batch
            return (
                self._check_tensor(x, step_index, self.cfg.d_in, "inputs", raise_nonfinite),
                self._check_tensor(y, step_index, self.cfg.d_out, "targets", raise_nonfinite),
            )
        return self._check_tensor(batch, step_index, self.cfg.d_in, "batch", raise_nonfinite), None

    def _check_tensor(self, x: Any, step_index: int, width: int, what: str, raise_nonfinite: bool) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} at step {step_index} is a {type(x).__name__}, expected a torch.Tensor")
        expected = (self.local_batch_size, width)
        if tuple(x.shape) != expected:
            raise ValueError(f"{what} at step {step_index} has shape {tuple(x.shape)}, expected {expected}")
        x = x.to(device=self.device, dtype=torch.float32)
        if raise_nonfinite and not bool(torch.isfinite(x).all()):
            raise self._non_finite(f"{what} at step {step_index} holds NaN or inf")
        return x

    def set_input_scale(self, head: list[Batch]) -> None:
        """Set the scales that give the first batches unit mean squared norm (inputs and targets each),
        and start the SAEs from the data (``b_dec_init="mean"``, thresholds for ``target_l0``)."""
        cfg = self.cfg
        n, D = len(head), cfg.d_in
        # float64 sums: [squared norms of x, of y, rows, per-batch non-finite flags, Σx per feature, Σy]
        sums = torch.zeros(3 + n + D + cfg.d_out, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(head):
            x, y = self._check_batch(batch, i, raise_nonfinite=self.parallel is None)
            x, y = x.double(), (x if y is None else y).double()
            sums[3 + i] = float(not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())))
            sums[0] += torch.dot(x.view(-1), x.view(-1))
            sums[1] += torch.dot(y.view(-1), y.view(-1))
            sums[2] += x.shape[0]
            sums[3 + n : 3 + n + D] += x.sum(0)
            sums[3 + n + D :] += y.sum(0)
        if self.parallel is not None:
            self.parallel.all_reduce_sum([sums])
            bad = torch.nonzero(sums[3 : 3 + n]).flatten().tolist()
            if bad:
                raise self._non_finite(f"batch at step {bad[0]} holds NaN or inf")
        count = float(sums[2])
        if float(sums[0]) <= 0 or float(sums[1]) <= 0:
            raise ValueError("the first batches are all zero; cannot set the input scale")
        # Fixed scalars so that E‖x·s‖² = 1; folded into the weights when the SAEs are saved.
        self.input_scale = float(1.0 / math.sqrt(float(sums[0]) / count))
        self.output_scale = (
            float(1.0 / math.sqrt(float(sums[1]) / count)) if cfg.is_transcoder else self.input_scale
        )
        if self.is_main:
            logger.info(
                "input scale %.6g (output scale %.6g) from %d batches", self.input_scale, self.output_scale, n
            )
        mean_x_D = mean_y_D = None
        if cfg.b_dec_init == "mean":
            mean_x_D = (sums[3 + n : 3 + n + D] / count * self.input_scale).float()
            mean_y_D = (sums[3 + n + D :] / count * self.output_scale).float()
        first_x, first_y = self._check_batch(head[0], 0)
        first_x_BD = first_x * self.input_scale
        first_y_BO = first_x_BD if first_y is None else first_y * self.output_scale
        if self.parallel is not None:  # the whole first batch, as one process would see it
            first_x_BD = self.parallel.all_gather_rows(first_x_BD)
            first_y_BO = first_x_BD if first_y is None else self.parallel.all_gather_rows(first_y_BO)
        for sae in self.saes:
            sae.init_from_data(mean_x_D, mean_y_D, first_x_BD, first_y_BO)

    # ------------------------------------------------------------------ results
    def inference_saes(self) -> list[JumpReLUSAE]:
        """Inference copies of the SAEs as they stand (JumpReLU SAEs or transcoders, whatever the
        architecture trained), reading raw activations: the scales folded into the weights."""
        if self.input_scale is None or self.output_scale is None:
            raise RuntimeError("no input scale yet: the trainer has not seen a batch")
        cfg = self.cfg
        out = []
        for sae, since in zip(self.saes, self.steps_since_fired, strict=True):
            metadata = {
                **self.metadata,
                "trained_with": "g2interp",
                "architecture": cfg.architecture,
                "training_tokens": self.step * cfg.batch_size,
                "input_scale_folded": self.input_scale,
                "dead_fraction": float((since >= cfg.dead_window_steps).sum()) / cfg.d_sae,
            }
            if cfg.target_l0 > 0:
                metadata["target_l0"] = cfg.target_l0
            if cfg.architecture == "jumprelu":
                metadata.update(l0_coefficient=sae.l0_coefficient, bandwidth=sae.bandwidth)
            if cfg.architecture == "matryoshka":
                metadata["matryoshka_widths"] = list(cfg.matryoshka_widths)
            if cfg.is_transcoder:
                metadata["output_scale_folded"] = self.output_scale
            out.append(inference_sae(sae, cfg, self.input_scale, self.output_scale, metadata))
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
    def _log(self, metrics: StepMetrics) -> None:
        if not self.is_main:
            return
        parts = [
            f"sae{i} λ={m.l0_coefficient:.3g} loss={m.loss:.4g} mse={m.mse:.4g} L0={m.l0:.1f} "
            f"fvu={m.fvu:.3f} dead={m.dead_fraction:.3f}"
            for i, m in enumerate(metrics.saes)
        ]
        head = f"step {metrics.step}/{self.cfg.total_steps} tokens={metrics.tokens} lr={metrics.lr:.3g}"
        logger.info("%s | %s", head, " | ".join(parts))
        if self.metrics_log is not None:
            record = {**metrics._asdict(), "saes": [m._asdict() for m in metrics.saes]}
            self.metrics_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_log, "a") as f:
                f.write(json.dumps(record) + "\n")


def train_together(
    trainers: Sequence[SAETrainer],
    batches: BatchSource,
    keys: Sequence[str | tuple[str, str]] | None = None,
    *,
    progress: bool = True,
) -> list[list[JumpReLUSAE]]:
    """Train every trainer to its end on one stream of batches; their inference SAEs, in order.

    Without ``keys`` each batch is a tensor every trainer takes; with them, a dict and trainer ``i``
    takes ``batch[keys[i]]`` (one SAE per hook from one read of a store), or for a key
    ``(hook_in, hook_out)`` the pair a transcoder trains on. Trainers resumed at
    different steps (a run killed between their checkpoints) each take their own next batch, so the
    stream is opened once, at the earliest. All must step on batches of one size.
    """
    if not trainers:
        raise ValueError("no trainers")
    if keys is not None and len(keys) != len(trainers):
        raise ValueError(f"{len(keys)} keys for {len(trainers)} trainers")
    sizes = {t.local_batch_size for t in trainers}
    if len(sizes) > 1:
        raise ValueError(f"trainers fed together must share one batch size, got {sorted(sizes)}")
    first = min(t.begin() for t in trainers)
    lead = trainers[0]
    stream: Iterator[Any] = iter(()) if all(t.done for t in trainers) else lead._open_batches(first, batches)
    total = max(t.cfg.total_steps for t in trainers)
    bar = tqdm(
        total=total,
        initial=min(t.step for t in trainers),
        unit="step",
        disable=not progress or not lead.is_main,
    )
    index = first
    try:
        while not all(t.done for t in trainers):
            batch = next(stream, None)
            if batch is None:
                waiting = next(t for t in trainers if not t.done)
                raise ValueError(
                    f"the batch stream ended at step {index}; the run needs {waiting.cfg.total_steps} batches "
                    f"({waiting.cfg.total_tokens} tokens)"
                )
            for i, trainer in enumerate(trainers):
                if not trainer.done and trainer.next_batch == index:
                    metrics = trainer.feed(batch if keys is None else _select(batch, keys[i]))
                    if i == 0 and metrics:
                        sae0 = metrics[-1].saes[0]
                        bar.set_postfix(L0=f"{sae0.l0:.1f}", fvu=f"{sae0.fvu:.3f}", refresh=False)
            index += 1
            bar.n = min(t.step for t in trainers)
            bar.refresh()
    finally:
        bar.close()
    return [trainer.finish() for trainer in trainers]


def _select(batch: Mapping[str, Tensor], key: str | tuple[str, str]) -> Batch:
    """A trainer's share of a dict batch: one hook's rows, or a transcoder's (inputs, targets)."""
    return (batch[key[0]], batch[key[1]]) if isinstance(key, tuple) else batch[key]
