"""Data-parallel SAE training over ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Every rank holds a full copy of the SAEs and trains on its own slice of each global batch
(``cfg.batch_size // world_size`` rows). The trainer computes per-rank gradients of the mean loss
over the local rows, sums them over ranks and divides by the number of ranks: with equal slices that
is the gradient of the mean over the global batch, so ``N`` ranks step exactly as one process fed the
concatenated batch would, up to float rounding of the sums. Firing counts, the input scale and the
metrics are reduced the same way, so every rank takes the same decisions (dead latents, L0 control,
non-finite batches) and only rank 0 writes checkpoints, logs and the final SAEs.

Launch with ``torchrun --nproc_per_node N ...``; :func:`init_data_parallel` reads torchrun's
environment. The checkpoint folder must be visible to every rank (one node, or a shared file system).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group."""

    rank: int
    """Index of this process in the group."""
    world_size: int
    """Number of processes."""
    group: Any = None
    """The ``torch.distributed`` process group (None: the default group)."""

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a group of {self.world_size}")

    @classmethod
    def from_process_group(cls, group: Any = None) -> DataParallel:
        """The current process's rank and world size in an initialised process group."""
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_data_parallel() first")
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def local_batch_size(self, batch_size: int) -> int:
        """Rows per rank of a global batch."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {self.world_size} ranks")
        return batch_size // self.world_size

    def all_reduce_sum(self, tensors: Sequence[Tensor]) -> None:
        """Sum each tensor over the ranks, in place (all launched before any is waited on)."""
        if self.world_size == 1:
            return
        works = [dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group, async_op=True) for t in tensors]
        for work in works:
            work.wait()

    def all_gather_rows(self, x: Tensor) -> Tensor:
        """Concatenate every rank's ``x`` (equal shapes) along dim 0, in rank order."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)


def init_data_parallel(init_method: str | None = None, backend: str | None = None) -> DataParallel | None:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Returns None when the process was not started by a launcher with ``WORLD_SIZE > 1``. The backend is
    NCCL when CUDA is available (each rank takes GPU ``LOCAL_RANK``), else gloo. ``init_method``
    (e.g. ``file:///tmp/rendezvous``) replaces torchrun's ``MASTER_ADDR``/``MASTER_PORT`` rendezvous.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(
            backend=backend or ("nccl" if cuda else "gloo"),
            init_method=init_method,
            rank=rank,
            world_size=world_size,
        )
    logger.info("data-parallel rank %d of %d (%s)", rank, world_size, dist.get_backend())
    return DataParallel.from_process_group()


def shard_batches(batches: Iterable[Tensor], parallel: DataParallel | None) -> Iterator[Tensor]:
    """This rank's rows ``[rank*b:(rank+1)*b]`` of each global batch (b = batch / world_size)."""
    for batch in batches:
        if parallel is None or parallel.world_size == 1:
            yield batch
            continue
        local = parallel.local_batch_size(batch.shape[0])
        yield batch[parallel.rank * local : (parallel.rank + 1) * local]
