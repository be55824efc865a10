"""Compile and fit: optimizer and loss builders, callbacks, and the per-epoch history.

Imports Keras at module level: only the commands that train or load models import this.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from aecli.backend import import_tensorflow
from aecli.compilation import JitDecision, resolve_jit_compile
from aecli.config import LossConfig, LRScheduleConfig, OptimizerConfig, TrainingConfig
from aecli.data import TENSOR_ALIGNMENT, aligned_empty
from aecli.distribute import gpu_available, read_cluster_task
from aecli.errors import DataError, TrainingDivergedError
from aecli.interrupts import pending_interrupt
from aecli.layers import MultiWorkerTrainer, VariationalAutoencoder
from aecli.noise import NoiseSpec, corrupt, corrupt_tensor
from aecli.runs import STATE_FILE, ResumeState, save_atomic, write_json_atomic
from aecli.shards import Stream

PIPELINE_THREADS = 2  # gathering a batch is a memory copy: two threads keep ahead of training
PIPELINE_PREFETCH = 4  # batches ready ahead of the training step
VALIDATION_BATCH_SIZE = 1024  # validation only runs forward passes: larger batches, same mean loss
# Python sees Ctrl-C/SIGTERM only between compiled calls: a fused block is cut into calls of about this long.
SECONDS_PER_CALL = 1.0
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


def reconstruction_pipeline(
    inputs: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    kind: str = "tensor",
    inputs_only: bool = False,
) -> Any:
    """A tf.data pipeline over in-memory arrays: shuffled row indices (reshuffled every epoch,
    seeded), batched, gathered, and prefetched.

    Feeding numpy arrays to `fit` rebuilds Keras's data adapter every epoch, which on small data
    sets costs more than the training itself; shuffling indices instead of rows keeps the
    per-epoch work small. kind "tensor" gathers with tf.gather from a tensor sharing the arrays'
    memory (fastest); "arrays" gathers with numpy through tf.numpy_function (slower).
    `inputs_only` leaves the targets out (see layers.MultiWorkerTrainer).
    """
    tf = import_tensorflow()
    shape = (None, *inputs.shape[1:])

    def from_arrays(rows: Any) -> tuple[Any, Any]:
        def take(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return inputs[index], targets[index]

        batch_in, batch_out = tf.numpy_function(take, [rows], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(batch_in, shape), tf.ensure_shape(batch_out, shape)

    if kind == "arrays":
        gather = from_arrays
    else:
        x = tensor_view(inputs)
        y = x if targets is inputs else tensor_view(targets)

        def gather(rows: Any) -> tuple[Any, Any]:
            return tf.gather(x, rows), tf.gather(y, rows)

    batches = (
        epoch_order(len(inputs), shuffle, seed)
        .batch(batch_size)
        .map(gather, num_parallel_calls=PIPELINE_THREADS, deterministic=True)
    )
    if inputs_only:
        batches = batches.map(lambda batch_in, batch_out: batch_in)
    return with_data_sharding(untuned(batches.prefetch(PIPELINE_PREFETCH)))


def epoch_order(rows: int, shuffle: bool, seed: int) -> Any:
    """Row indices in training order: a seeded shuffle, drawn afresh every epoch."""
    tf = import_tensorflow()
    order = tf.data.Dataset.range(rows)
    return order.shuffle(rows, seed=seed, reshuffle_each_iteration=True) if shuffle else order


def untuned(dataset: Any) -> Any:
    """Fixed settings instead of tf.data's tuning: its default graph rewrites serialize the
    pipeline with any captured array in it (a second copy of the data in memory), and its
    autotuner, competing with training for the cores, made one epoch in three ~60% slower."""
    tf = import_tensorflow()
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return dataset.with_options(options)


def tensor_view(array: np.ndarray) -> Any:
    """A TensorFlow tensor over the array's own memory (DLPack: no copy). TensorFlow requires
    64-byte aligned buffers, which aecli's scaled arrays are (data.aligned_empty); any other
    array is copied once into an aligned buffer. `tf.constant` would cost two copies."""
    tf = import_tensorflow()
    if array.ctypes.data % TENSOR_ALIGNMENT or not array.flags.c_contiguous or not array.flags.writeable:
        aligned = aligned_empty(array.shape, array.dtype)
        aligned[...] = array
        array = aligned
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def with_data_sharding(dataset: Any) -> Any:
    """Under a multi-worker strategy, each worker takes every n-th batch: in-memory data has no
    files to split between workers (TensorFlow's default policy would try, and warn)."""
    tf = import_tensorflow()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def step_blocks(rows: int, batch_size: int, block_steps: int, shuffle: bool, seed: int) -> Any:
    """One epoch of training batches as row-index blocks for `fused_train_function`.

    The epoch's order is `epoch_order`, as in `reconstruction_pipeline`, cut into batches; full
    batches come `block_steps` at a time as ([block_steps, batch_size] indices, number of real
    steps), the last block padded, so that one compiled program serves them all; a final short
    batch comes alone, as ([1, rest], 1).
    """
    tf = import_tensorflow()
    full, rest = divmod(rows, batch_size)

    def blocks(order: Any) -> Any:
        order = tf.cast(order, tf.int32)
        batches = tf.reshape(order[: full * batch_size], (full, batch_size))

        def padded(block: Any) -> tuple[Any, Any]:
            steps = tf.shape(block)[0]
            block = tf.pad(block, [[0, block_steps - steps], [0, 0]])
            return tf.ensure_shape(block, (block_steps, batch_size)), steps

        fulls = tf.data.Dataset.from_tensor_slices(batches).batch(block_steps).map(padded)
        if not rest:
            return fulls
        return fulls.concatenate(tf.data.Dataset.from_tensors((order[None, full * batch_size :], 1)))

    count = math.ceil(full / block_steps) + (1 if rest else 0)
    epochs = epoch_order(rows, shuffle, seed).batch(rows).flat_map(blocks)
    return untuned(epochs.apply(tf.data.experimental.assert_cardinality(count)).prefetch(2))


def steps_after_block(rows: int, batch_size: int, block_steps: int) -> Callable[[int], int]:
    """How many training steps an epoch has taken after its `step_blocks` block number `block`."""
    full = rows // batch_size
    full_blocks = math.ceil(full / block_steps)
    steps = math.ceil(rows / batch_size)
    return lambda block: min((block + 1) * block_steps, full) if block < full_blocks else steps


def fused_train_function(
    model: keras.Model, x: np.ndarray, jit_compile: bool, noise: NoiseSpec | None = None, seed: int = 0
) -> Any:
    """A replacement for Keras's train function that runs a whole block of steps (see
    `step_blocks`) as one compiled program, gathering each batch from the training array inside
    it. Keras's own multi-step loop calls a separately compiled step, and fetches a batch, for
    every step: on small dense models that costs as much as the arithmetic. Each step is still
    the model's own `train_step`, so losses, metrics and optimizer updates are Keras's. With
    `noise` (denoising), each step's inputs are corrupted inside the program, drawn from `seed` and
    the optimizer's step count: fresh every step and epoch, the same on a rerun.

    A block runs as one or more calls of at most about `SECONDS_PER_CALL` each (the first call
    takes a single step, then the count follows the measured step time), so that Ctrl-C and
    SIGTERM, which Python only sees between calls, are honoured within seconds whatever the model.
    """
    tf = import_tensorflow()
    rows = tensor_view(x)
    if not model.optimizer.built:  # variables made while tracing would cost a second trace
        model.optimizer.build(model.trainable_variables)

    signature = [tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)]

    @tf.function(jit_compile=jit_compile, input_signature=signature)
    def run_steps(block: Any, start: Any, stop: Any) -> Any:
        def one_step(step: Any) -> Any:
            batch = tf.gather(rows, block[step])
            inputs = batch
            if noise is not None:
                draw = tf.stack([tf.constant(seed, tf.int64), tf.cast(model.optimizer.iterations, tf.int64)])
                inputs = corrupt_tensor(batch, noise, draw)
            model.train_step((inputs, batch))
            return step + 1

        tf.while_loop(lambda step: step < stop, one_step, [start])
        return model.get_metrics_result()

    pace = CallPace()

    def train_function(iterator: Any) -> Any:
        block, steps = next(iterator)
        start, steps = 0, int(steps)
        while True:
            stop = min(steps, start + pace.steps_per_call)
            started = time.perf_counter()
            logs = run_steps(block, tf.constant(start), tf.constant(stop))
            pace.observe(stop - start, time.perf_counter() - started)
            if stop == steps:
                return logs
            _raise_pending_interrupt()
            start = stop

    return train_function


class CallPace:
    """How many steps one compiled call may run so that it lasts about `SECONDS_PER_CALL`."""

    def __init__(self) -> None:
        self.steps_per_call = 1  # the first call also compiles: one step, then measured

    def observe(self, steps: int, seconds: float) -> None:
        self.steps_per_call = max(1, int(SECONDS_PER_CALL * steps / max(seconds, 1e-9)))


def _raise_pending_interrupt() -> None:
    interrupt = pending_interrupt()
    if interrupt is not None:  # a signal whose exception native code swallowed
        raise interrupt


class NoisyBatches(keras.utils.PyDataset):
    """Denoising input: (corrupted batch, clean batch), with fresh noise and order every epoch."""

    def __init__(self, x: np.ndarray, batch_size: int, noise: NoiseSpec, seed: int, shuffle: bool) -> None:
        super().__init__()
        self.x, self.batch_size, self.shuffle = x, batch_size, shuffle
        self.noise = noise
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
        _raise_pending_interrupt()
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
        row["seconds"] = time.perf_counter() - self._started
        self.rows.append(row)
        if self.reporter:
            self.reporter.epoch_finished(epoch + 1, self.epochs, row)


def choose_jit_compile(model: keras.Model, training: TrainingConfig, distributed: bool = False) -> JitDecision:
    """`training.jit_compile` resolved for this model on this machine (see compilation.py)."""
    backend = keras.backend.backend()
    accelerator = backend == "tensorflow" and gpu_available(backend)
    return resolve_jit_compile(training.jit_compile, layer_kinds(model), backend, accelerator, distributed)


def layer_kinds(model: keras.Layer) -> set[str]:
    """The class names of every layer inside `model`, nested models (encoder, decoder) included."""
    kinds = set()
    for layer in getattr(model, "layers", []):
        kinds.add(type(layer).__name__)
        kinds |= layer_kinds(layer)
    return kinds


def _execution(
    model: keras.Model,
    x_train: np.ndarray | Stream,
    training: TrainingConfig,
    steps: int,
    distributed: bool,
    jit: JitDecision | None,
) -> tuple[int, bool, bool]:
    """Steps per compiled call, XLA or not, and whether the fused blocks (`fused_train_function`,
    Keras then counting one "step" per block) train this model.

    Several steps per call, so per-step framework overhead no longer dominates small models;
    callbacks still see every epoch. One step per call under tf.distribute (Keras 3.15's
    multi-step loop fails on distributed iterators) and on PyTorch (Keras's trainer refuses more).
    """
    one_step = distributed or keras.backend.backend() == "torch"
    steps_per_execution = 1 if one_step else min(training.steps_per_execution, steps)
    jit_compile = (jit or choose_jit_compile(model, training, distributed)).enabled
    fused = (
        isinstance(x_train, np.ndarray)
        and training.input_pipeline == "tensor"
        and not distributed
        and steps_per_execution > 1
        and keras.backend.backend() == "tensorflow"
        # On a GPU the captured host array would be copied to the device by every call: there,
        # Keras's loop moves only the batches. (Untested on GPUs; CPUs are where per-step cost hurts.)
        and not gpu_available("tensorflow")
    )
    return steps_per_execution, jit_compile, fused


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
    strategy: Any = None,
    jit: JitDecision | None = None,
) -> TrainingResult:
    """Compile `model` and fit it to reproduce its input; checkpoints and logs go under `run_dir`.

    With `resume`, `model` is the loaded last checkpoint: its optimizer (and state) is kept and
    training continues after `resume.epoch` finished epochs. With a tf.distribute `strategy`,
    `model` must have been built in its scope; `batch_size` is the global batch. `x_train` and
    `x_val` are arrays, or Streams over shard folders (data larger than memory). `jit` is
    `choose_jit_compile`'s decision, when the caller has already made (and recorded) it.
    """
    n_train = len(x_train) if isinstance(x_train, np.ndarray) else x_train.rows
    full_batch = optimizer.name == "gd"
    batch_size = n_train if full_batch else min(training.batch_size, n_train)
    steps = math.ceil(n_train / batch_size)
    assert optimizer.learning_rate is not None  # resolved by validation
    learning_rate = build_learning_rate(optimizer.learning_rate, training.lr_schedule, steps, training.epochs)
    distributed = strategy is not None
    steps_per_execution, jit_compile, fused = _execution(model, x_train, training, steps, distributed, jit)
    inputs_only = training.distribute.strategy == "multi_worker"
    speed = {"steps_per_execution": 1 if fused else steps_per_execution, "jit_compile": jit_compile}
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        keras_optimizer = model.optimizer if resume is not None else build_optimizer(optimizer, learning_rate)
        # The wrapper keeps the model's dtype policy, so that mixed precision still gets loss scaling.
        trained = (
            MultiWorkerTrainer(model, shaped_logs=read_cluster_task().workers > 1, dtype=model.dtype_policy)
            if inputs_only
            else model
        )
        if isinstance(model, VariationalAutoencoder):
            trained.compile(optimizer=keras_optimizer, **speed)  # its own loss: see layers.py
        else:
            trained.compile(optimizer=keras_optimizer, loss=build_loss(loss), **speed)
    monitor = "val_loss" if x_val is not None else "loss"
    if training.early_stopping is not None:
        monitor = training.early_stopping.monitor
    progress = steps_after_block(n_train, batch_size, steps_per_execution) if fused else None
    recorder = _HistoryRecorder(training.epochs, steps, reporter, progress)
    callbacks: list[keras.callbacks.Callback] = [recorder, _StopOnNonFiniteLoss(), _ReturnFreedMemory()]
    if resume is not None:
        recorder.rows = list(resume.history)
    callbacks += _optional_callbacks(training, monitor, run_dir)
    callbacks += _checkpoint_callback(training, monitor, run_dir, recorder, resume)
    callbacks += _schedule_callbacks(training, monitor, run_dir)

    shuffle = training.shuffle and not full_batch
    validation: Any = None
    noise = None if training.noise is None else NoiseSpec(training.noise.kind, training.noise.amount)
    if not isinstance(x_train, np.ndarray):
        train_data: Any = x_train.dataset(batch_size, shuffle, training.seed, inputs_only, noise)
        if isinstance(x_val, Stream):
            validation = x_val.dataset(VALIDATION_BATCH_SIZE, False, training.seed + 1, inputs_only, noise, True)
    else:
        block_steps = steps_per_execution if fused else 0
        train_data, validation = _in_memory_feeds(
            x_train, x_val, batch_size, shuffle, training, inputs_only, noise, block_steps
        )
        if fused:
            # Keras's fit keeps the train function it finds until the next compile; trained.jit_compile
            # is the config's choice unless Keras found the model unfit for XLA.
            trained.train_function = fused_train_function(trained, x_train, trained.jit_compile, noise, training.seed)

    started = time.perf_counter()
    try:
        if isinstance(train_data, tuple):
            feed = {"x": train_data[0], "y": train_data[1], "batch_size": batch_size, "shuffle": shuffle}
        else:
            feed = {"x": train_data, "shuffle": False}
        trained.fit(
            **feed,
            validation_data=validation,
            epochs=training.epochs,
            initial_epoch=0 if resume is None else resume.epoch,
            callbacks=callbacks,
            verbose=0,
        )
    except import_tensorflow().errors.OpError as exc:
        if isinstance(x_train, np.ndarray) or "DataError: " not in str(exc):
            raise
        # A shard that fails while streaming: TensorFlow wraps the DataError raised in the reader.
        raise DataError(str(exc).split("DataError: ", 1)[1].splitlines()[0]) from None
    finally:
        if fused:  # it takes index blocks and holds the training data: not for later fits
            trained.train_function = None
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
        samples_per_second=n_train * (len(history) - (resume.epoch if resume else 0)) / seconds
        if seconds > 0
        else math.inf,
    )


def _in_memory_feeds(
    x_train: np.ndarray,
    x_val: Any,
    batch_size: int,
    shuffle: bool,
    training: TrainingConfig,
    inputs_only: bool,
    noise: NoiseSpec | None,
    block_steps: int = 0,
) -> tuple[Any, Any]:
    """What fit consumes for arrays: index blocks for the fused train function (`block_steps`
    steps each), a tf.data pipeline, noisy batches, or the arrays themselves."""
    train_data: Any = (x_train, x_train)  # "keras": let fit slice the arrays itself
    if block_steps:
        train_data = step_blocks(len(x_train), batch_size, block_steps, shuffle, training.seed)
    elif training.input_pipeline != "keras":
        train_data = reconstruction_pipeline(
            x_train, x_train, batch_size, shuffle, training.seed, training.input_pipeline, inputs_only
        )
    x_val_input = x_val
    if noise is not None:
        if not block_steps:  # the fused blocks draw their noise inside the compiled program
            train_data = NoisyBatches(x_train, batch_size, noise, training.seed, shuffle)
        if x_val is not None:  # validate on fixed noisy inputs, so val_loss is comparable across epochs
            x_val_input = corrupt(x_val, noise, np.random.default_rng(training.seed + 1))
    if x_val is None:
        return train_data, None
    if training.input_pipeline == "keras":
        return train_data, (x_val_input, x_val)
    validation = reconstruction_pipeline(
        x_val_input, x_val, VALIDATION_BATCH_SIZE, False, training.seed, training.input_pipeline, inputs_only
    )
    return train_data, validation


class _EpochCheckpoint(keras.callbacks.Callback):
    """checkpoints/best.keras when the monitored loss improves, checkpoints/last.keras (model and
    optimizer state) plus state.json after every epoch. Unlike keras.callbacks.ModelCheckpoint,
    every file is written atomically, so a kill at any moment leaves the previous complete one."""

    def __init__(
        self, folder: Path, monitor: str, recorder: _HistoryRecorder, best: bool, last: bool, initial_best: float | None
    ) -> None:
        super().__init__()
        self.folder, self.monitor, self.recorder = folder, monitor, recorder
        self.save_best, self.save_last = best, last
        self.best = math.inf if initial_best is None else initial_best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = float((logs or {}).get(self.monitor, math.nan))
        if not math.isfinite(value):
            return  # a diverged epoch never replaces a good checkpoint
        if self.save_best and value < self.best:
            self.best = value
            save_atomic(self.folder / "best.keras", self.model.save)
        if self.save_last:
            save_atomic(self.folder / "last.keras", self.model.save)
            best = self.best if math.isfinite(self.best) else None  # none yet when best checkpoints are off
            state = {"epoch": epoch + 1, "history": self.recorder.rows, "best": best, "monitor": self.monitor}
            write_json_atomic(self.folder / STATE_FILE, state)


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
    return callbacks


def _checkpoint_callback(
    training: TrainingConfig, monitor: str, run_dir: Path, recorder: _HistoryRecorder, resume: ResumeState | None
) -> list[keras.callbacks.Callback]:
    if not (training.checkpoint.best or training.checkpoint.last):
        return []
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    best = None if resume is None else resume.best
    return [_EpochCheckpoint(folder, monitor, recorder, training.checkpoint.best, training.checkpoint.last, best)]


def _schedule_callbacks(training: TrainingConfig, monitor: str, run_dir: Path) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = []
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
