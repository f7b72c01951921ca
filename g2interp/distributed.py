"""Data parallelism over ``torch.distributed`` (gloo on CPU, NCCL on CUDA), one helper for capture and training.

:func:`init_data_parallel` joins the group torchrun describes and picks this rank's device;
:class:`DataParallel` says where this process stands and carries the collectives the stages need.
Training: each rank trains on its ``batch_size // world_size`` rows and gradients are averaged, so ``N``
ranks step as one process fed the whole batch would (up to float rounding). Capture: ranks split the
missing shards round-robin and rank 0 merges their journals. Output folders must be visible to every rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RankFailedError(RuntimeError):
    """Another rank of the group failed; this one stops too."""


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group (rank 0 of 1 without one)."""

    rank: int = 0
    """Index of this process in the group."""
    world_size: int = 1
    """Number of processes."""
    group: Any = None
    """The ``torch.distributed`` process group (None: the default group)."""
    device: str | None = None
    """This rank's device (``cuda:LOCAL_RANK`` on CUDA); None: the default."""

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a group of {self.world_size}")

    @classmethod
    def current(cls, group: Any = None) -> DataParallel:
        """This process's place in the initialised process group, else in a group of one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(group), dist.get_world_size(group), group)
        return cls()

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

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and hand its result (or its exception) to every rank."""
        if self.world_size == 1:
            return fn()
        box: list = [None]
        if self.rank == 0:
            try:
                box[0] = (fn(), None)
            except Exception as exc:
                box[0] = (None, exc)
        dist.broadcast_object_list(box, src=0, group=self.group)
        result, error = box[0]
        if error is not None:
            raise error
        return result

    def raise_if_any_failed(self, error: BaseException | None) -> None:
        """Every rank raises when one has failed (the failing rank its own error)."""
        if self.world_size > 1:
            status: list = [None] * self.world_size
            dist.all_gather_object(status, None if error is None else repr(error), group=self.group)
            failed = [(r, s) for r, s in enumerate(status) if s is not None]
            if failed and error is None:
                rank, message = failed[0]
                raise RankFailedError(f"rank {rank} failed: {message}")
        if error is not None:
            raise error


def init_data_parallel(
    init_method: str | None = None, backend: str | None = None, device: str | None = None
) -> DataParallel:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    A process not started by a launcher with ``WORLD_SIZE > 1`` is rank 0 of 1 on ``device``. In a group
    the backend is NCCL when this rank runs on CUDA (taking GPU ``LOCAL_RANK``), else gloo;
    ``init_method`` (e.g. ``file:///tmp/rendezvous``) replaces torchrun's rendezvous.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DataParallel(device=device)
    rank = int(os.environ["RANK"])
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend or ("nccl" if cuda else "gloo"),
            init_method=init_method,
            rank=rank,
            world_size=world_size,
        )
    logger.info("data-parallel rank %d of %d (%s)", rank, world_size, dist.get_backend())
    return replace(DataParallel.current(), device=device)


def close_data_parallel(parallel: DataParallel | None) -> None:
    """Leave the group :func:`init_data_parallel` joined (nothing for a group of one)."""
    if parallel is not None and parallel.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
