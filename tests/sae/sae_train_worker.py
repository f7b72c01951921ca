"""Subprocess for the kill -9 / resume test: a small two-SAE sweep over a deterministic batch stream.

    python sae_train_worker.py CHECKPOINT_DIR [--pause-at STEP] [--iterable]

With ``--pause-at`` it prints ``PAUSED <step>`` after that step and sleeps until killed.
With ``--iterable`` the batches come as one iterable (the trainer skips what it already trained on)
instead of a ``batches_from(step)`` callable.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator

import torch

from g2interp.sae import JumpReLUTrainingSAE, SAETrainer, SAETrainingConfig

D_IN, D_SAE, BATCH, STEPS = 16, 64, 32, 20


def config() -> SAETrainingConfig:
    return SAETrainingConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        batch_size=BATCH,
        total_tokens=BATCH * STEPS,
        lr=3e-3,
        lr_warmup_steps=4,
        lr_decay_steps=5,
        l0_coefficient=3e-3,
        l0_warmup_steps=6,
        bandwidth=0.01,
        threshold_init=0.01,
        n_norm_batches=3,
        dead_window_steps=4,
        checkpoint_every=5,
        keep_checkpoints=2,
        log_every=1,
        sparse_below=0.3,
        hook_name="blocks.0.hook_resid_post",
        model_name="synthetic",
    )


def batch(index: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10_000 + index)
    return torch.randn(BATCH, D_IN, generator=gen) * 7.0 + 1.0


def batches_from(start: int) -> Iterator[torch.Tensor]:
    index = start
    while True:
        yield batch(index)
        index += 1


class AllBatches:
    """A re-iterable stream, for the skip-on-resume path."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        return batches_from(0)


def saes(cfg: SAETrainingConfig) -> list[JumpReLUTrainingSAE]:
    dense = JumpReLUTrainingSAE.initialised(cfg)
    # a high threshold keeps few latents near firing, so this one takes the sparse kernels
    sparse = JumpReLUTrainingSAE.initialised(cfg, l0_coefficient=1e-2)
    with torch.no_grad():
        sparse.threshold.fill_(math.exp(-0.5))
    return [dense, sparse]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--pause-at", type=int, default=None)
    parser.add_argument("--iterable", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the global RNG is checkpointed too; seeded, it compares equal across processes

    def pause(trainer: SAETrainer, metrics) -> None:
        if metrics.step == args.pause_at:
            print(f"PAUSED {metrics.step}", flush=True)
            time.sleep(600)

    cfg = config()
    source = AllBatches() if args.iterable else batches_from
    trainer = SAETrainer(
        cfg,
        saes(cfg),
        source,
        callbacks=[pause],
        checkpoint_dir=args.checkpoint_dir,
        metrics_log=f"{args.checkpoint_dir}/metrics.jsonl",
        progress=False,
    )
    trainer.fit()
    print("DONE", flush=True)


if __name__ == "__main__":
    sys.exit(main())
