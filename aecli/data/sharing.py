"""Multi-worker training over a shard folder: which shard files each worker reads, and a count
of what it read.

Each worker of a cluster reads only its own files (the n-th worker every n-th file of each
split, as tf.data's FILE auto-sharding would assign them), so N workers together read the folder
once per epoch instead of N times. The data layer knows nothing of tf.distribute: the cluster's
collective operations reach it as two functions of `WorkerShare` (see distribute.Placement.share).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from aecli.errors import ConfigError

File = TypeVar("File")


@dataclass(frozen=True)
class WorkerShare:
    """This worker's place among the cluster's input pipelines, and the collectives it joins.

    `gather(array)` returns every worker's array concatenated along the first axis in worker
    order (each worker must call it, in the same order); `distribute(make)` turns a function that
    builds this worker's tf.data pipeline into what Keras's fit consumes on a cluster.
    """

    index: int
    count: int
    gather: Callable[[np.ndarray], np.ndarray]
    distribute: Callable[[Callable[[], Any]], Any]
    names: tuple[str, ...] = ()  # each worker's name in TF_CONFIG ("worker 1", "chief"), by index

    def name(self, worker: int) -> str:
        return self.names[worker] if worker < len(self.names) else f"worker {worker}"

    def own(self, files: tuple[File, ...], worker: int | None = None) -> tuple[File, ...]:
        """The files a worker (this one by default) reads: every `count`-th, from its index."""
        return files[self.index if worker is None else worker :: self.count]

    def check_batch(self, global_batch: int) -> None:
        if global_batch % self.count:
            raise ConfigError(
                f"training.batch_size {global_batch} is the global batch: with {self.count} workers reading "
                f"their own shard files it must be a multiple of {self.count}"
            )

    def local_batch(self, global_batch: int) -> int:
        """A worker's share of a global batch (the global batch is a multiple of the worker count)."""
        return max(1, global_batch // self.count)


@dataclass
class ReadCounter:
    """What a process read from a shard folder: distinct files, payload bytes and rows decoded,
    counted where the rows are read (tf.data runs readers on its own threads, hence the lock)."""

    files: set[str] = field(default_factory=set)
    bytes: int = 0
    rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, file: str, rows: int, payload_bytes: int) -> None:
        with self._lock:
            self.files.add(file)
            self.rows += rows
            self.bytes += payload_bytes

    def to_dict(self, files_in_folder: int) -> dict[str, int]:
        return {"files": len(self.files), "files_in_folder": files_in_folder, "bytes": self.bytes, "rows": self.rows}
