"""One rank of the data-parallel test (or the single-process reference, ``--world 1``).

    python ddp_worker.py OUT --world 2 --rank R --init-file PATH

Trains on a deterministic stream of global batches, each rank on its slice, three times:

* ``OUT/fixed``: two SAEs (λ sweep, Gemma Scope warm-up; one starts with high thresholds, so it takes
  the sparse kernels), checkpoints every 4 steps;
* ``OUT/steered``: ``target_l0`` (thresholds from the gathered first batch, quadratic L0 penalty, dead-latent loss) and
  ``b_dec_init="mean"``;
* ``OUT/resumed``: the ``fixed`` run stopped by every rank at step 6 (checkpoint 4), then resumed;
* a run whose rank ``--world - 1`` gets a NaN at step 5: every rank must raise, none may hang.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from g2interp.distributed import DataParallel, close_data_parallel, init_data_parallel
from g2interp.sae import JumpReLUTrainingSAE, NonFiniteError, SAETrainer, SAETrainingConfig

D_IN, D_SAE, BATCH, STEPS = 16, 64, 64, 12


def shard_batches(batches, parallel: DataParallel | None):
    """This rank's rows ``[rank*b:(rank+1)*b]`` of each global batch (b = batch / world_size)."""
    for batch in batches:
        if parallel is None or parallel.world_size == 1:
            yield batch
            continue
        local = parallel.local_batch_size(batch.shape[0])
        yield batch[parallel.rank * local : (parallel.rank + 1) * local]


def config(**overrides) -> SAETrainingConfig:
    base = dict(
        d_in=D_IN,
        d_sae=D_SAE,
        batch_size=BATCH,
        total_tokens=BATCH * STEPS,
        lr=3e-3,
        lr_warmup_steps=3,
        l0_coefficient=3e-3,
        l0_warmup_steps=5,
        bandwidth=0.01,
        threshold_init=0.01,
        n_norm_batches=3,
        dead_window_steps=4,
        checkpoint_every=4,
        keep_checkpoints=2,
        log_every=1,
        sparse_below=0.3,
    )
    return SAETrainingConfig(**{**base, **overrides})


def global_batch(index: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + index)
    x = torch.randn(BATCH, D_IN, generator=gen) * 5.0 + 2.0
    x[:, 3] += 40.0  # an outlier dimension with a large offset, like Gemma's residual stream
    return x


def stream(nan_at: int | None = None, nan_rows: slice | None = None):
    for i in range(STEPS):
        x = global_batch(i)
        if i == nan_at:
            x[nan_rows, 0] = float("nan")
        yield x


class Stop(Exception):
    pass


def stop_at(step: int):
    def callback(trainer: SAETrainer, metrics) -> None:
        if metrics.step == step:
            raise Stop

    return callback


def run(out: Path, cfg: SAETrainingConfig, parallel: DataParallel | None, callbacks=(), **kwargs) -> None:
    saes = [JumpReLUTrainingSAE.initialised(cfg), JumpReLUTrainingSAE.initialised(cfg, l0_coefficient=1e-2)]
    if cfg.target_l0 == 0:
        with torch.no_grad():
            saes[1].threshold.fill_(math.exp(-0.5))
    trainer = SAETrainer(
        cfg,
        saes,
        lambda start: shard_batches(list(stream(**kwargs))[start:], parallel),
        checkpoint_dir=out,
        metrics_log=out / "metrics.jsonl",
        progress=False,
        parallel=parallel,
        callbacks=callbacks,
    )
    trainer.fit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--init-file", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.environ.update(RANK=str(args.rank), WORLD_SIZE=str(args.world), LOCAL_RANK=str(args.rank))
    parallel = init_data_parallel(init_method=f"file://{args.init_file}" if args.init_file else None)
    run(args.out / "fixed", config(), parallel)
    try:
        run(args.out / "resumed", config(), parallel, callbacks=[stop_at(6)])
    except Stop:
        run(args.out / "resumed", config(), parallel)
    run(args.out / "steered", config(target_l0=6.0, b_dec_init="mean", aux_coefficient=1e-3), parallel)
    # the NaN sits in the last rank's slice only
    nan_rows = slice(BATCH - 2, BATCH)
    try:
        run(args.out / "nan", config(), parallel, nan_at=5, nan_rows=nan_rows)
    except NonFiniteError as exc:
        print(f"NONFINITE {exc}", flush=True)
    close_data_parallel(parallel)
    print("DONE", flush=True)


if __name__ == "__main__":
    sys.exit(main())
