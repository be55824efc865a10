"""`training.distribute` and `training.mixed_precision`: tf.distribute strategies, the placement
record, and whether mixed precision makes sense on this machine.

TensorFlow does the distributed work; this module only creates the strategy at the right
moment and answers the questions the rest of aecli asks: which process writes the run, and
whether mixed precision makes sense on this machine.

MultiWorkerMirroredStrategy must exist before TensorFlow's runtime starts (it configures
collective ops at start-up), so `place` runs before anything else touches TensorFlow,
and `backend.import_tensorflow` skips its device query when TF_CONFIG is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import DistributeConfig
from aecli.data.sharing import WorkerShare
from aecli.errors import AecliError, ConfigError

TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
)


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a TF_CONFIG cluster."""

    kind: str  # chief | worker | ...
    index: int
    workers: int  # chief + workers
    has_chief: bool

    @property
    def is_chief(self) -> bool:
        """The chief writes the run: task type `chief`, or worker 0 when the cluster names no chief."""
        return self.kind == "chief" or (self.kind == "worker" and self.index == 0 and not self.has_chief)

    @property
    def pipeline(self) -> int:
        """This task's input pipeline, numbered as tf.distribute numbers them: the chief first."""
        return self.index + 1 if self.kind == "worker" and self.has_chief else self.index

    @property
    def names(self) -> tuple[str, ...]:
        """Every training task's name as TF_CONFIG spells it, in pipeline order."""
        workers = self.workers - (1 if self.has_chief else 0)
        return (("chief",) if self.has_chief else ()) + tuple(f"worker {i}" for i in range(workers))


def read_cluster_task(environ: dict[str, str] | None = None) -> ClusterTask:
    """Parse TF_CONFIG, with one-line errors for the mistakes people make writing it by hand."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        raise ConfigError(
            f"training.distribute.strategy multi_worker: set TF_CONFIG on every worker, e.g. {TF_CONFIG_EXAMPLE}"
        )
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = str(task["type"]), int(task["index"])
        members = {name: _addresses(name, addresses) for name, addresses in cluster.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"TF_CONFIG is not a cluster spec ({reason}); expected e.g. {TF_CONFIG_EXAMPLE}") from None
    if kind not in members or not 0 <= index < len(members[kind]):
        raise ConfigError(f"TF_CONFIG: task {kind}:{index} is not in its cluster ({', '.join(members)})")
    workers = len(members.get("chief", [])) + len(members.get("worker", []))
    return ClusterTask(kind, index, workers, has_chief="chief" in members)


def _addresses(job: str, addresses: Any) -> list[str]:
    """A job's `host:port` list, checked here rather than by TensorFlow's less helpful errors."""
    if not isinstance(addresses, list) or not all(isinstance(address, str) for address in addresses):
        raise ValueError(f'cluster.{job} must be a list of "host:port" strings, got {addresses!r}')
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster.{job}: {address!r} is not host:port")
    return addresses


@dataclass(frozen=True)
class Placement:
    """Where this process trains, decided once from `training.distribute` (and TF_CONFIG): the
    tf.distribute strategy (None: one device), whether this process writes the run directory,
    and how many workers train together."""

    strategy: Any = None
    chief: bool = True
    workers: int = 1
    multi_worker: bool = False  # batches carry no targets (see layers.MultiWorkerTrainer)
    task: ClusterTask | None = None  # multi_worker: this process's task in TF_CONFIG

    @property
    def distributed(self) -> bool:
        return self.strategy is not None

    @property
    def replicas(self) -> int:
        return 1 if self.strategy is None else int(self.strategy.num_replicas_in_sync)

    def scope(self) -> Any:
        """The strategy's scope, in which models and optimizers are created (a no-op without one)."""
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()

    @property
    def one_replica_per_worker(self) -> bool:
        return self.replicas == self.workers

    def share(self) -> WorkerShare | None:
        """For a cluster of several workers with one replica each: this worker's share of a
        shard folder, and the collectives through which the workers combine what they read.
        (A worker with several GPUs would need its share split again per replica: not done.)"""
        if self.task is None or self.workers < 2 or not self.one_replica_per_worker:
            return None
        tf, strategy = import_tensorflow(), self.strategy

        def gather(array: np.ndarray) -> np.ndarray:
            local = tf.constant(array)
            values = strategy.experimental_distribute_values_from_function(lambda _: local)
            return np.asarray(strategy.gather(values, axis=0))

        def distribute(make: Callable[[], Any]) -> Any:
            # Each worker builds its own pipeline (its own files): nothing is left to auto-sharding.
            return strategy.distribute_datasets_from_function(lambda _: make())

        return WorkerShare(self.task.pipeline, self.workers, gather, distribute, self.task.names)


_REMOTE = re.compile(r"remote target (/job:\w+/replica:\d+/task:\d+)")


class ClusterError(AecliError):
    """A worker (or the chief) of a multi-worker cluster stopped: the others cannot go on alone.
    The run keeps its last finished epoch and continues when every worker resumes it."""

    exit_code = 4


@contextlib.contextmanager
def cluster_errors(placement: Placement, next_step: str) -> Iterator[None]:
    """On a cluster, TensorFlow's report of a lost task (a collective aborted because a peer
    stopped sending heartbeats) as a ClusterError naming the task and saying `next_step`."""
    if not placement.multi_worker:
        yield
        return
    tf = import_tensorflow()
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.InternalError, tf.errors.AbortedError) as exc:
        message = str(exc)
        if "unhealthy" not in message and "Collective ops is aborted" not in message:
            raise  # not a lost peer (e.g. a storage error): a bug or its own error, as it came
        # The lost task is listed after "unhealthy" (heartbeats missed), or, when the connection
        # to it broke first, named as the remote target of the failed call.
        named = message.split("unhealthy", 1)[1] if "unhealthy" in message else " ".join(_REMOTE.findall(message))
        tasks = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", named)))
        who = ", ".join(f"{job} {task}" for job, task in tasks) or "another task"
        raise ClusterError(
            f"the cluster lost {who} (it stopped answering; its own output says why); {next_step}"
        ) from None


def place(cfg: DistributeConfig) -> Placement:
    """The placement for `cfg`; call before any other TensorFlow work (see the module's docstring)."""
    if cfg.strategy == "none":
        return Placement()
    if cfg.strategy == "multi_worker":
        task = read_cluster_task()  # a clear error before TensorFlow tries to reach the cluster
        tf = import_tensorflow()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Placement(strategy, task.is_chief, task.workers, multi_worker=True, task=task)
    tf = import_tensorflow()
    if cfg.devices is not None:
        known = {device.name.lower() for device in tf.config.list_logical_devices()}
        missing = [device for device in cfg.devices if _canonical(device) not in known]
        if missing:
            raise ConfigError(
                f"training.distribute.devices: no device {', '.join(missing)} here "
                f"(available: {', '.join(sorted(known))})"
            )
    return Placement(tf.distribute.MirroredStrategy(devices=cfg.devices))


def _canonical(device: str) -> str:
    """`/gpu:0`, `GPU:0` and `/device:GPU:0` all name the device TensorFlow lists as /device:GPU:0."""
    short = device.lower().removeprefix("/").removeprefix("device:")
    return f"/device:{short}"


def gpu_available(backend: str) -> bool:
    if backend == "tensorflow":
        return bool(import_tensorflow().config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    import torch

    return bool(torch.cuda.is_available())


def check_mixed_precision(setting: bool | str, backend: str) -> None:
    """Refuse mixed precision where it only costs time (no GPU), unless it is forced."""
    if setting is True and not gpu_available(backend):
        raise ConfigError(
            "training.mixed_precision: no GPU here, and float16 on a CPU is slower than float32; "
            "use mixed_precision: force to run it anyway"
        )
