"""Compile and fit: optimizer and loss builders, callbacks, and the per-epoch history.

What `fit` consumes comes from feeds.py; how the steps run (fused blocks, XLA, steps per call)
from execution.py. Imports Keras at module level: only the commands that train import this.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from aecli.augment import Augment
from aecli.backend import import_tensorflow
from aecli.checkpoints import EpochCheckpoint
from aecli.config import TEXT_KINDS, LossConfig, LRScheduleConfig, OptimizerConfig, RobustConfig, TrainingConfig
from aecli.distribute import Placement
from aecli.errors import DataError, TrainingDivergedError
from aecli.execution import (
    ExecutionPlan,
    fused_test_function,
    fused_train_function,
    plan_for_model,
    raise_pending_interrupt,
)
from aecli.feeds import Feeds, InMemoryValidation, Stream, make_feeds
from aecli.interrupts import pending_interrupt
from aecli.layers import MultiWorkerTrainer, VariationalAutoencoder
from aecli.losses import TrimmedLoss
from aecli.noise import NoiseSpec, noise_spec
from aecli.runs import ResumeState

KERAS_OPTIMIZERS: dict[str, str] = {
    "gd": "SGD",
    "sgd": "SGD",
    "momentum": "SGD",
    "nesterov": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "nadam": "Nadam",
}


class ProgressReporter(Protocol):
    """What the training loop tells the display; the CLI chooses rich or plain output."""

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step_finished(self, step: int, loss: float | None) -> None: ...

    def epoch_finished(self, epoch: int, epochs: int, row: dict[str, float]) -> None: ...

    def training_finished(self) -> None: ...


@dataclass
class TrainingResult:
    history: list[dict[str, float]]
    epochs_run: int
    best_epoch: int
    best_loss: float
    monitor: str
    seconds: float
    samples_per_second: float


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and the backend: call before building the model so weights are reproducible."""
    keras.utils.set_random_seed(seed)


def build_optimizer(cfg: OptimizerConfig, learning_rate: Any = None) -> keras.optimizers.Optimizer:
    """The Keras optimizer for `cfg`; gd/sgd/momentum/nesterov are SGD with different knobs.

    `learning_rate` replaces cfg.learning_rate, e.g. with a schedule from `build_learning_rate`.
    """
    knobs = cfg.model_dump(exclude={"name"}, exclude_none=True)
    if learning_rate is not None:
        knobs["learning_rate"] = learning_rate
    if cfg.name == "nesterov":
        knobs["nesterov"] = True
    optimizer_class = getattr(keras.optimizers, KERAS_OPTIMIZERS[cfg.name])
    return optimizer_class(**knobs)


def build_learning_rate(
    initial: float, cfg: LRScheduleConfig, steps_per_epoch: int, epochs: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, or a per-step schedule whose knobs are expressed per epoch."""
    if cfg.kind == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            initial, decay_steps=steps_per_epoch, decay_rate=cfg.decay_rate
        )
    if cfg.kind == "cosine" and cfg.warmup_epochs:
        warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, steps_per_epoch * epochs - warmup),
            alpha=cfg.alpha,
            warmup_target=initial,
            warmup_steps=warmup,
        )
    if cfg.kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(initial, decay_steps=steps_per_epoch * epochs, alpha=cfg.alpha)
    return initial


def build_loss(cfg: LossConfig, model_kind: str = "dense", robust: RobustConfig | None = None) -> keras.losses.Loss:
    """`loss` as Keras's loss object; a text model's loss compares with its input as a bag of
    words (bow) or token by token (sequence): see text_layers.py. With `robust`, each batch's
    worst rows are left out of it (losses.TrimmedLoss)."""
    if model_kind in TEXT_KINDS:
        from aecli.text_layers import BagOfWordsCrossentropy, TokenCrossentropy

        return TokenCrossentropy() if model_kind == "sequence" else BagOfWordsCrossentropy(cfg.name)
    if robust is not None:
        return TrimmedLoss(build_loss(cfg, model_kind), robust.trim)
    if cfg.name == "mse":
        return keras.losses.MeanSquaredError()
    if cfg.name == "mae":
        return keras.losses.MeanAbsoluteError()
    if cfg.name == "bce":
        return keras.losses.BinaryCrossentropy()
    return keras.losses.Huber(delta=cfg.delta)


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Like keras.callbacks.TerminateOnNaN (NaN or inf), without printing to stdout."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        raise_pending_interrupt()
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True


class _ReturnFreedMemory(keras.callbacks.Callback):
    """Hands freed heap pages back to the OS after every epoch (glibc's malloc_trim).

    Every epoch Keras builds a new input iterator; its buffers, freed across many threads'
    malloc arenas, would otherwise stay resident and grow peak RSS epoch after epoch.
    """

    def __init__(self) -> None:
        super().__init__()
        try:
            self.trim: Any = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
            self.trim = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.trim is not None:
            self.trim(0)


class _HistoryRecorder(keras.callbacks.Callback):
    """Per-epoch loss, validation loss, learning rate and wall seconds, streamed to the reporter."""

    def __init__(
        self,
        epochs: int,
        steps: int,
        reporter: ProgressReporter | None,
        steps_after: Callable[[int], int] | None = None,
    ) -> None:
        super().__init__()
        self.epochs, self.steps, self.reporter = epochs, steps, reporter
        # what Keras calls batch number n may be a block of steps
        self.steps_after = steps_after or (lambda batch: batch + 1)
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()
        if self.reporter:
            self.reporter.epoch_started(epoch + 1, self.epochs, self.steps)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.reporter:
            loss = (logs or {}).get("loss")
            self.reporter.step_finished(self.steps_after(batch), None if loss is None else float(loss))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        row = {"epoch": epoch + 1, "loss": float(logs.get("loss", math.nan))}
        row.update({key: float(value) for key, value in logs.items() if key != "learning_rate" and key not in row})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = time.perf_counter() - self._started  # so far: EpochFinished adds the callbacks' time
        self.rows.append(row)

    def finish_epoch(self) -> None:
        row = self.rows[-1]
        row["seconds"] = time.perf_counter() - self._started
        if self.reporter:
            self.reporter.epoch_finished(int(row["epoch"]), self.epochs, row)


class _EpochFinished(keras.callbacks.Callback):
    """The last callback of an epoch: its row's seconds cover everything the epoch cost."""

    def __init__(self, recorder: _HistoryRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.recorder.finish_epoch()


def fit_autoencoder(
    model: keras.Model,
    x_train: np.ndarray | Stream,
    x_val: np.ndarray | Stream | None,
    training: TrainingConfig,
    optimizer: OptimizerConfig,
    loss: LossConfig,
    run_dir: Path,
    reporter: ProgressReporter | None = None,
    resume: ResumeState | None = None,
    placement: Placement | None = None,
    plan: ExecutionPlan | None = None,
    augment: Augment | None = None,
    model_kind: str = "dense",
) -> TrainingResult:
    """Compile `model` and fit it to reproduce its input; checkpoints and logs go under `run_dir`.

    With `resume`, `model` is the loaded last checkpoint: its optimizer (and state) is kept and
    training continues after `resume.epoch` finished epochs. Under a distributed `placement`,
    `model` must have been built in its scope; `batch_size` is the global batch. `x_train` and
    `x_val` are arrays, or Streams over shard folders (data larger than memory). `plan` is
    execution.plan_for_model's, when the caller has already made (and recorded) it. `augment`
    (augment.augmenter's) changes every training batch, never the validation data.
    """
    placement = placement or Placement()
    if plan is None:
        plan = plan_for_model(model, training, optimizer.name == "gd", x_train, placement, augment is not None)
    rows = plan.rows
    keras_loss = build_loss(loss, model_kind, training.robust)
    trained = _compile(model, plan, optimizer, keras_loss, training, placement, resume)
    monitor = _monitor(training, has_validation=x_val is not None)
    recorder = _HistoryRecorder(training.epochs, plan.steps, reporter, plan.steps_after())
    if resume is not None:
        recorder.rows = list(resume.history)
    callbacks = _callbacks(training, monitor, run_dir, recorder, resume, distributed=placement.workers > 1)
    noise = noise_spec(training.noise)
    feeds = make_feeds(x_train, x_val, plan.feed_options(training, noise, augment))
    if plan.fused and isinstance(x_train, np.ndarray):
        _install_fused_functions(trained, x_train, feeds, noise, training.seed, augment is not None)
    try:
        seconds = _fit(trained, feeds, training, callbacks, resume, streamed=not isinstance(x_train, np.ndarray))
    except KeyboardInterrupt:  # the finished epochs still in memory go to disk, so resume starts after them
        for callback in callbacks:
            if isinstance(callback, EpochCheckpoint):
                callback.flush()
        raise
    finally:
        if plan.fused:  # it takes index blocks and holds the training data: not for later fits
            trained.train_function = trained.test_function = None
        if reporter:
            reporter.training_finished()
    return _result(recorder.rows, monitor, seconds, rows, resume, optimizer)


def _install_fused_functions(
    trained: keras.Model, x_train: np.ndarray, feeds: Feeds, noise: NoiseSpec | None, seed: int, augmented: bool
) -> None:
    """The fused train function and validation pass in place of Keras's:
    fit keeps the functions it finds until the next compile. trained.jit_compile is the plan's
    choice unless Keras found the model unfit for XLA."""
    validation = feeds.validation if isinstance(feeds.validation, InMemoryValidation) else None
    if keras.backend.backend() == "jax":
        from aecli import jax_fused

        trained.train_function = jax_fused.fused_train_function(trained, x_train, noise, seed)
        if validation is not None:
            trained.test_function = jax_fused.fused_test_function(trained, validation)
        return
    trained.train_function = fused_train_function(
        trained, x_train, trained.jit_compile, noise, seed, augmented_blocks=augmented
    )
    if validation is not None:
        trained.test_function = fused_test_function(trained, validation, trained.jit_compile)


def _compile(
    model: keras.Model,
    plan: ExecutionPlan,
    optimizer: OptimizerConfig,
    loss: keras.losses.Loss,
    training: TrainingConfig,
    placement: Placement,
    resume: ResumeState | None,
) -> keras.Model:
    """The model that fit trains, compiled: `model` itself, or under multi-worker training a
    wrapper that takes inputs without targets (see layers.MultiWorkerTrainer)."""
    learning_rate = build_learning_rate(optimizer.learning_rate, training.lr_schedule, plan.steps, training.epochs)
    speed = {"steps_per_execution": plan.steps_per_execution, "jit_compile": plan.jit.enabled}
    with placement.scope():
        keras_optimizer = model.optimizer if resume is not None else build_optimizer(optimizer, learning_rate)
        # The wrapper keeps the model's dtype policy, so that mixed precision still gets loss scaling.
        noise = noise_spec(training.noise)
        trained = (
            MultiWorkerTrainer(
                model,
                shaped_logs=placement.workers > 1,
                noise=None if noise is None else str(noise),
                noise_seed=training.seed,
                dtype=model.dtype_policy,
            )
            if plan.inputs_only
            else model
        )
        if isinstance(model, VariationalAutoencoder):
            trained.compile(optimizer=keras_optimizer, **speed)  # its own loss: see layers.py
        else:
            trained.compile(optimizer=keras_optimizer, loss=loss, **speed)
    return trained


def _monitor(training: TrainingConfig, has_validation: bool) -> str:
    """The loss that picks the best epoch (and that early stopping watches)."""
    if training.early_stopping is not None:
        return training.early_stopping.monitor
    return "val_loss" if has_validation else "loss"


def _fit(
    trained: keras.Model,
    feeds: Feeds,
    training: TrainingConfig,
    callbacks: list[keras.callbacks.Callback],
    resume: ResumeState | None,
    streamed: bool,
) -> float:
    """Run Keras's fit; returns its wall seconds. A shard that fails while streaming reaches here
    as TensorFlow's wrapping of the DataError raised in the reader: it leaves as that DataError."""
    started = time.perf_counter()
    try:
        trained.fit(
            **feeds.fit_arguments(),
            epochs=training.epochs,
            initial_epoch=0 if resume is None else resume.epoch,
            callbacks=callbacks,
            verbose=0,
        )
    except import_tensorflow().errors.OpError as exc:
        if not streamed or "DataError: " not in str(exc):
            raise
        raise DataError(str(exc).split("DataError: ", 1)[1].splitlines()[0]) from None
    except SystemError:
        # Ctrl-C raised while TensorFlow's native code was calling Python (a streamed input's
        # reader) can surface as "bad argument to internal function": it is the interrupt.
        interrupt = pending_interrupt()
        if interrupt is None:
            raise
        raise interrupt from None
    return time.perf_counter() - started


def _result(
    history: list[dict[str, float]],
    monitor: str,
    seconds: float,
    rows: int,
    resume: ResumeState | None,
    optimizer: OptimizerConfig,
) -> TrainingResult:
    if not history or not all(math.isfinite(row["loss"]) for row in history):
        raise TrainingDivergedError(
            f"training diverged (loss became NaN or inf at epoch {len(history)}); "
            f"lower optimizer.learning_rate (now {optimizer.learning_rate:g}) or set optimizer.clipnorm"
        )
    values = [row.get(monitor, row["loss"]) for row in history]
    best_index = int(np.nanargmin(values))
    epochs_now = len(history) - (resume.epoch if resume else 0)
    return TrainingResult(
        history=history,
        epochs_run=len(history),
        best_epoch=best_index + 1,
        best_loss=float(values[best_index]),
        monitor=monitor,
        seconds=seconds,
        samples_per_second=rows * epochs_now / seconds if seconds > 0 else math.inf,
    )


def _callbacks(
    training: TrainingConfig,
    monitor: str,
    run_dir: Path,
    recorder: _HistoryRecorder,
    resume: ResumeState | None,
    distributed: bool,
) -> list[keras.callbacks.Callback]:
    """The recorder opens each epoch's row; the other callbacks see it; EpochFinished closes it last,
    so that the epoch's seconds include their work (checkpoints) too."""
    callbacks: list[keras.callbacks.Callback] = [recorder, _StopOnNonFiniteLoss(), _ReturnFreedMemory()]
    stopping = training.early_stopping
    if stopping is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=stopping.monitor,
                patience=stopping.patience,
                min_delta=stopping.min_delta,
                restore_best_weights=stopping.restore_best_weights,
            )
        )
    if training.checkpoint.best or training.checkpoint.last:
        folder = run_dir / "checkpoints"
        folder.mkdir(exist_ok=True)
        keep = (training.checkpoint.best, training.checkpoint.last)
        best = None if resume is None else resume.best
        callbacks.append(EpochCheckpoint(folder, monitor, recorder.rows, keep, best, every_epoch=distributed))
    schedule = training.lr_schedule
    if schedule.kind == "reduce_on_plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=schedule.factor, patience=schedule.patience, min_lr=schedule.min_lr
            )
        )
    if training.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    return [*callbacks, _EpochFinished(recorder)]
