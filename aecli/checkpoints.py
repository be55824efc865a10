"""Per-epoch checkpoints: checkpoints/last.keras with state.json (what `train --resume` reads)
and checkpoints/best.keras (lowest monitored loss), each written atomically.

Serialising a model and its optimizer takes about 0.05 s (the dense MNIST model), longer than an
epoch of a small data set (digits: 0.03 s), so writing every epoch could triple a run. A write
therefore waits until the time since the previous one is SPACING times what that one took
(checkpoints cost at most about 1/SPACING of training); an epoch in between is kept as a copy of
the variables in memory, written when training ends or is interrupted. Only a kill -9 loses
epochs: those since the last write, at most SPACING write durations of training.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from aecli.atomic import atomic_path, save_atomic
from aecli.interrupts import deferred_interrupts
from aecli.runs import ResumeState, write_resume_state

SPACING = 20


@dataclass(frozen=True)
class Snapshot:
    """The values of a model's and its optimizer's variables after one epoch."""

    epoch: int  # epochs finished
    history: list[dict[str, float]]
    values: list[Any]

    @staticmethod
    def variables(model: keras.Model) -> list[Any]:
        return [*model.variables, *model.optimizer.variables]

    @staticmethod
    def copies(variables: list[Any]) -> list[Any]:
        # TensorFlow and PyTorch copy on the device, 4x faster than into numpy; JAX would compile
        # a copy program per shape on first use (0.1 s), and its numpy copy is cheap.
        if keras.backend.backend() == "jax":
            return [np.array(v.value) for v in variables]
        return [keras.ops.copy(v.value) for v in variables]

    @classmethod
    def take(cls, model: keras.Model, epoch: int, history: list[dict[str, float]]) -> Snapshot:
        return cls(epoch, list(history), cls.copies(cls.variables(model)))

    def save(self, model: keras.Model, save: Callable[[], None]) -> None:
        """Run `save` with the model holding this snapshot's values, then put the live ones back."""
        variables = self.variables(model)
        live = self.copies(variables)
        try:
            for variable, value in zip(variables, self.values, strict=True):
                variable.assign(value)
            save()
        finally:
            for variable, value in zip(variables, live, strict=True):
                variable.assign(value)


class EpochCheckpoint(keras.callbacks.Callback):
    """best.keras when the monitored loss improves, last.keras plus state.json after every epoch,
    written at most every SPACING times a write's duration (see the module's docstring), or
    after every epoch where `every_epoch` (multi-worker training: every worker must write alike).
    Unlike keras.callbacks.ModelCheckpoint, every file is written atomically, so a kill at any
    moment leaves the previous complete one."""

    def __init__(
        self,
        folder: Path,
        monitor: str,
        history: list[dict[str, float]],
        keep: tuple[bool, bool],
        initial_best: float | None,
        every_epoch: bool = False,
    ) -> None:
        super().__init__()
        self.folder, self.monitor, self.history = folder, monitor, history
        self.save_best, self.save_last = keep
        self.best = math.inf if initial_best is None else initial_best
        self.every_epoch = every_epoch
        self.due = 0.0  # perf_counter time from which an epoch's checkpoint is written at once
        self.pending_last: Snapshot | None = None
        self.pending_best: Snapshot | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = float((logs or {}).get(self.monitor, math.nan))
        if not math.isfinite(value):
            return  # a diverged epoch never replaces a good checkpoint
        improved = self.save_best and value < self.best
        if improved:
            self.best = value
        final = epoch + 1 >= self.params.get("epochs", 0)
        if self.every_epoch or final or time.perf_counter() >= self.due:
            started = time.perf_counter()
            with deferred_interrupts():
                self._write_live(epoch + 1, improved)
            self.due = time.perf_counter() + SPACING * (time.perf_counter() - started)
            return
        snapshot = Snapshot.take(self.model, epoch + 1, self.history)
        self.pending_last = snapshot if self.save_last else None
        self.pending_best = snapshot if improved else self.pending_best

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.flush()

    def flush(self) -> None:
        """Write the epochs kept in memory (training ended, stopped early or was interrupted)."""
        with deferred_interrupts():
            if self.pending_last is not None:
                pending, self.pending_last = self.pending_last, None
                pending.save(self.model, lambda: self._write_last(pending.epoch, pending.history))
            self._write_pending_best()

    def _write_pending_best(self) -> None:
        if self.pending_best is not None:
            pending, self.pending_best = self.pending_best, None
            pending.save(self.model, lambda: save_atomic(self.folder / "best.keras", self.model.save))

    def _write_live(self, epoch: int, improved: bool) -> None:
        self.pending_last = None
        if self.save_last:
            self._write_last(epoch, self.history)
        if improved:
            self.pending_best = None
            if self.save_last:  # the same bytes: a copy instead of a second serialisation
                with atomic_path(self.folder / "best.keras") as temp:
                    shutil.copyfile(self.folder / "last.keras", temp)
            else:
                save_atomic(self.folder / "best.keras", self.model.save)
        else:  # an earlier epoch's best, still in memory: written with this epoch's last
            self._write_pending_best()

    def _write_last(self, epoch: int, history: list[dict[str, float]]) -> None:
        save_atomic(self.folder / "last.keras", self.model.save)
        best = self.best if math.isfinite(self.best) else None  # none yet when best checkpoints are off
        write_resume_state(self.folder, ResumeState(epoch, history, best), self.monitor)
