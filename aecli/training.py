"""Compile and fit: optimizer and loss builders, callbacks, and the per-epoch history.

Imports Keras at module level: only the commands that train or load models import this.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from aecli.config import LossConfig, LRScheduleConfig, NoiseConfig, OptimizerConfig, TrainingConfig
from aecli.errors import TrainingDivergedError
from aecli.layers import VariationalAutoencoder
from aecli.noise import NoiseSpec, corrupt

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
    if cfg.kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial, decay_steps=steps_per_epoch * epochs, alpha=cfg.alpha or 0.0
        )
    return initial


class NoisyBatches(keras.utils.PyDataset):
    """Denoising input: (corrupted batch, clean batch), with fresh noise and order every epoch."""

    def __init__(self, x: np.ndarray, batch_size: int, noise: NoiseConfig, seed: int, shuffle: bool) -> None:
        super().__init__()
        self.x, self.batch_size, self.shuffle = x, batch_size, shuffle
        self.noise = NoiseSpec(noise.kind, noise.amount)
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        clean = self.x[self.order[index * self.batch_size : (index + 1) * self.batch_size]]
        return corrupt(clean, self.noise, self.rng), clean

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))


def build_loss(cfg: LossConfig) -> keras.losses.Loss:
    if cfg.name == "mse":
        return keras.losses.MeanSquaredError()
    if cfg.name == "mae":
        return keras.losses.MeanAbsoluteError()
    if cfg.name == "bce":
        return keras.losses.BinaryCrossentropy()
    return keras.losses.Huber(delta=cfg.delta if cfg.delta is not None else 1.0)


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Like keras.callbacks.TerminateOnNaN (NaN or inf), without printing to stdout."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True


class _HistoryRecorder(keras.callbacks.Callback):
    """Per-epoch loss, validation loss, learning rate and wall seconds, streamed to the reporter."""

    def __init__(self, epochs: int, steps: int, reporter: ProgressReporter | None) -> None:
        super().__init__()
        self.epochs, self.steps, self.reporter = epochs, steps, reporter
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()
        if self.reporter:
            self.reporter.epoch_started(epoch + 1, self.epochs, self.steps)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.reporter:
            loss = (logs or {}).get("loss")
            self.reporter.step_finished(batch + 1, None if loss is None else float(loss))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        row = {"epoch": epoch + 1, "loss": float(logs.get("loss", math.nan))}
        row.update({key: float(value) for key, value in logs.items() if key != "learning_rate" and key not in row})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = time.perf_counter() - self._started
        self.rows.append(row)
        if self.reporter:
            self.reporter.epoch_finished(epoch + 1, self.epochs, row)


def fit_autoencoder(
    model: keras.Model,
    x_train: np.ndarray,
    x_val: np.ndarray | None,
    training: TrainingConfig,
    optimizer: OptimizerConfig,
    loss: LossConfig,
    run_dir: Path,
    reporter: ProgressReporter | None = None,
) -> TrainingResult:
    """Compile `model` and fit it to reproduce its input; checkpoints and logs go under `run_dir`."""
    full_batch = optimizer.name == "gd"
    batch_size = len(x_train) if full_batch else min(training.batch_size, len(x_train))
    steps = math.ceil(len(x_train) / batch_size)
    assert optimizer.learning_rate is not None  # resolved by validation
    learning_rate = build_learning_rate(optimizer.learning_rate, training.lr_schedule, steps, training.epochs)
    if isinstance(model, VariationalAutoencoder):
        model.compile(optimizer=build_optimizer(optimizer, learning_rate))  # its own loss: see layers.py
    else:
        model.compile(optimizer=build_optimizer(optimizer, learning_rate), loss=build_loss(loss))
    monitor = "val_loss" if x_val is not None else "loss"
    if training.early_stopping is not None:
        monitor = training.early_stopping.monitor
    recorder = _HistoryRecorder(training.epochs, steps, reporter)
    callbacks: list[keras.callbacks.Callback] = [recorder, _StopOnNonFiniteLoss()]
    callbacks += _optional_callbacks(training, monitor, run_dir)

    inputs: dict[str, Any] = {
        "x": x_train,
        "y": x_train,
        "batch_size": batch_size,
        "shuffle": training.shuffle and not full_batch,
    }
    validation = None if x_val is None else (x_val, x_val)
    if training.noise is not None:
        inputs = {"x": NoisyBatches(x_train, batch_size, training.noise, training.seed, training.shuffle)}
        if x_val is not None:  # validate on fixed noisy inputs, so val_loss is comparable across epochs
            noise = NoiseSpec(training.noise.kind, training.noise.amount)
            validation = (corrupt(x_val, noise, np.random.default_rng(training.seed + 1)), x_val)

    started = time.perf_counter()
    try:
        model.fit(**inputs, validation_data=validation, epochs=training.epochs, callbacks=callbacks, verbose=0)
    finally:
        if reporter:
            reporter.training_finished()
    seconds = time.perf_counter() - started

    history = recorder.rows
    if not history or not all(math.isfinite(row["loss"]) for row in history):
        raise TrainingDivergedError(
            f"training diverged (loss became NaN or inf at epoch {len(history)}); "
            f"lower optimizer.learning_rate (now {optimizer.learning_rate:g}) or set optimizer.clipnorm"
        )
    values = [row.get(monitor, row["loss"]) for row in history]
    best_index = int(np.nanargmin(values))
    return TrainingResult(
        history=history,
        epochs_run=len(history),
        best_epoch=best_index + 1,
        best_loss=float(values[best_index]),
        monitor=monitor,
        seconds=seconds,
        samples_per_second=len(x_train) * len(history) / seconds if seconds > 0 else math.inf,
    )


def _optional_callbacks(training: TrainingConfig, monitor: str, run_dir: Path) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = []
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
    checkpoints = run_dir / "checkpoints"
    if training.checkpoint.best or training.checkpoint.last:
        checkpoints.mkdir(exist_ok=True)
    if training.checkpoint.best:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(checkpoints / "best.keras", monitor=monitor, save_best_only=True)
        )
    if training.checkpoint.last:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoints / "last.keras"))
    schedule = training.lr_schedule
    if schedule.kind == "reduce_on_plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=schedule.factor, patience=schedule.patience, min_lr=schedule.min_lr or 0.0
            )
        )
    if training.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    return callbacks
