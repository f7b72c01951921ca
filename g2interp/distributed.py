"""Data parallelism over ``torch.distributed`` (gloo on CPU, NCCL on CUDA), for capture and SAE training.

One helper for every stage: :func:`init_data_parallel` joins the group torchrun describes and picks this
rank's device; :class:`DataParallel` says where this process stands and carries the few collectives the
stages need (sums for gradients and statistics, rank 0 running something for all, every rank failing
when one has).

SAE training: every rank holds a full copy of the SAEs and trains on its own ``batch_size // world_size``
rows of each step; the trainer sums per-rank gradients of the mean loss over local rows and divides by
the number of ranks, so ``N`` ranks step as one process fed the concatenated batch would, up to float
rounding. Capture: ranks split the missing shards round-robin; rank 0 merges their journals.

Launch with ``torchrun --nproc_per_node N ...``. Output folders must be visible to every rank (one node,
or a shared file system).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
) -> tuple[DataParallel | None, str | None]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Returns ``(group, device)``: the group is None when the process was not started by a launcher with
    ``WORLD_SIZE > 1``, and ``device`` is then returned unchanged. In a group the backend is NCCL when
    this rank runs on CUDA (taking GPU ``LOCAL_RANK``), else gloo. ``init_method`` (e.g.
    ``file:///tmp/rendezvous``) replaces torchrun's ``MASTER_ADDR``/``MASTER_PORT`` rendezvous.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None, device
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
    return DataParallel.current(), device


def close_data_parallel(parallel: DataParallel | None) -> None:
    """Leave the group :func:`init_data_parallel` joined (nothing without one)."""
    if parallel is not None and dist.is_initialized():
        dist.destroy_process_group()
