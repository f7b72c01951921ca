"""Background shard writer: serialise, checksum and durably write shards while the model runs on."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from g2interp.activations.batches import Rows
from g2interp.activations.manifest import (
    ShardFile,
    ShardRecord,
    StoreWriteError,
    durable_write,
    save_tensors,
    sha256_bytes,
    shard_file_name,
)

logger = logging.getLogger(__name__)

WriteFile = Callable[[Path, bytes], None]
"""Writes bytes to a path durably (temp file + fsync + rename); replaceable to simulate disk faults."""


@dataclass(frozen=True)
class PendingShard:
    """A finished shard waiting to be written."""

    index: int
    """Shard number."""
    context_start: int
    """First context in the shard."""
    context_end: int
    """One past the last context in the shard."""
    rows: Rows
    """Its rows: activations per hook already in the storage dtype on the CPU, and their index (int32)."""
    sum_squared_norm: Mapping[str, float]
    """Per hook: sum of squared row norms."""


def shard_bytes(shard: PendingShard, hook: str) -> bytes:
    """One hook's shard file: activations plus the row index, with the hook and shard in the metadata."""
    r = shard.rows
    tensors = dict(
        activations=r.activations[hook], tokens=r.tokens, contexts=r.contexts, positions=r.positions
    )
    return save_tensors({k: t.contiguous() for k, t in tensors.items()}, {"hook": hook, "shard": shard.index})


class ShardWriter:
    """Writes shards from a bounded queue on one thread; each shard's files, then ``on_durable(record)``.

    ``submit`` blocks while ``queue_size`` shards wait, which bounds memory. A failure on the thread
    stops it and is raised, as :class:`StoreWriteError`, from the next ``submit`` or from ``close``.
    """

    def __init__(
        self,
        root: Path,
        folders: Mapping[str, str],
        on_durable: Callable[[ShardRecord], None],
        *,
        queue_size: int = 2,
        write_file: WriteFile = durable_write,
    ):
        self.root = Path(root)
        self.folders = dict(folders)
        self.on_durable = on_durable
        self.write_file = write_file
        self.records: list[ShardRecord] = []
        self.bytes_written = 0
        self._queue: queue.Queue[PendingShard | None] = queue.Queue(maxsize=queue_size)
        self._error: StoreWriteError | None = None
        self._step = ""  # what the thread is doing, named in errors
        self._thread = threading.Thread(target=self._run, name="g2interp-shard-writer", daemon=True)
        self._thread.start()

    def submit(self, shard: PendingShard) -> None:
        """Queue a shard (blocks while the queue is full); raises if the writer has failed."""
        self._raise_if_failed()
        self._put(shard)
        self._raise_if_failed()

    def close(self) -> list[ShardRecord]:
        """Write what is queued, stop the thread, and return the records written (raises on failure)."""
        self._put(None)
        self._thread.join()
        self._raise_if_failed()
        return self.records

    def _put(self, item: PendingShard | None) -> None:
        """Queue ``item``, waiting while the queue is full, unless the thread stops (it failed) meanwhile."""
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            shard = self._queue.get()
            if shard is None:
                return
            try:
                self._write(shard)
            except BaseException as exc:
                self._error = StoreWriteError(
                    f"writing shard {shard.index} failed while {self._step}: {exc!r}. The store keeps the shards its manifest "
                    f"lists ({len(self.records)} written by this run); fix the cause and run the same "
                    f"capture again to resume."
                )
                self._error.__cause__ = exc
                logger.error("%s", self._error)
                return

    def _write(self, shard: PendingShard) -> None:
        files = {}
        for hook, folder in self.folders.items():
            rel = f"{folder}/{shard_file_name(shard.index)}"
            self._step = f"serialising {hook}"
            data = shard_bytes(shard, hook)
            self._step = f"writing {self.root / rel}"
            self.write_file(self.root / rel, data)
            files[hook] = ShardFile(rel, sha256_bytes(data), len(data))
            self.bytes_written += len(data)
        record = ShardRecord(
            index=shard.index,
            context_start=shard.context_start,
            context_end=shard.context_end,
            rows=shard.rows.n_rows,
            files=files,
            sum_squared_norm=dict(shard.sum_squared_norm),
        )
        self._step = "recording it in the manifest"
        self.on_durable(record)  # the manifest names the shard only once all its files are durable
        self.records.append(record)
