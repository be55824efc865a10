"""How fit executes the training steps: the execution plan (batch size, steps per compiled call,
XLA, fused blocks), decided once per model and machine, and the fused train function that runs
a block of steps as one compiled program.

Imports Keras at module level: only the training code (training.py, commands/train.py) imports this.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from aecli.augment import Augment
from aecli.backend import import_tensorflow
from aecli.compilation import SLOWER_UNDER_XLA_ON_CPU, JitDecision, resolve_jit_compile
from aecli.config import TrainingConfig
from aecli.distribute import Placement, gpu_available
from aecli.feeds import VALIDATION_BATCH_SIZE, FeedOptions, InMemoryValidation, Stream, steps_after_block, tensor_view
from aecli.interrupts import pending_interrupt
from aecli.noise import NoiseSpec, corrupt_tensor

# An augmented fused block holds its batches (not row indices): at most this many bytes of them.
AUGMENTED_BLOCK_BYTES = 32 * 2**20
# Python sees Ctrl-C/SIGTERM only between compiled calls: a fused block is cut into calls of about this long.
SECONDS_PER_CALL = 1.0


@dataclass(frozen=True)
class Machine:
    """What the plan depends on beyond the config: the Keras backend and whether a GPU is here."""

    backend: str
    gpu: bool

    @classmethod
    def here(cls) -> Machine:
        backend = keras.backend.backend()
        return cls(backend, backend == "tensorflow" and gpu_available(backend))


@dataclass(frozen=True)
class ExecutionPlan:
    """How one fit runs. `steps_per_execution` is what Keras is told (1 under fused blocks, where
    one Keras "step" is a block of `block_steps` real steps); `steps` is per epoch."""

    rows: int
    batch_size: int
    steps: int
    steps_per_execution: int
    block_steps: int
    jit: JitDecision
    shuffle: bool
    inputs_only: bool

    @property
    def fused(self) -> bool:
        return self.block_steps > 0

    def feed_options(
        self, training: TrainingConfig, noise: NoiseSpec | None, augment: Augment | None = None
    ) -> FeedOptions:
        return FeedOptions(
            self.batch_size,
            self.shuffle,
            training.seed,
            training.input_pipeline,
            self.inputs_only,
            None if self.inputs_only else noise,  # the multi-worker trainer corrupts its own inputs
            self.block_steps,
            augment,
            fused_validation=self.fused and not self.inputs_only and keras.backend.backend() != "torch",
        )

    def steps_after(self) -> Any:
        """For progress: real steps done after Keras's batch number n (a block when fused)."""
        return steps_after_block(self.rows, self.batch_size, self.block_steps) if self.fused else None


def plan_execution(
    training: TrainingConfig,
    rows: int,
    full_batch: bool,
    in_memory: bool,
    layer_kinds: set[str],
    placement: Placement,
    machine: Machine,
    augmented_sample_bytes: int = 0,
) -> ExecutionPlan:
    """The plan for `rows` training rows of a model made of `layer_kinds` on `machine`.

    Several steps per compiled call, so per-step framework overhead no longer dominates small
    models; callbacks still see every epoch. One step per call under tf.distribute (Keras 3.15's
    multi-step loop fails on distributed iterators) and on PyTorch (Keras's trainer refuses more).
    In-memory arrays on a CPU train in fused blocks (`fused_train_function`); on a GPU the
    captured host array would be copied to the device by every call, so there Keras's loop runs.
    With augmentation, a fused block carries its batches themselves (`augmented_sample_bytes`
    per sample), so blocks are cut to at most `AUGMENTED_BLOCK_BYTES`.
    """
    batch_size = rows if full_batch else min(training.batch_size, rows)
    steps = math.ceil(rows / batch_size)
    one_step = placement.distributed or machine.backend == "torch"
    per_call = 1 if one_step else min(training.steps_per_execution, steps)
    jit = resolve_jit_compile(training.jit_compile, layer_kinds, machine.backend, machine.gpu, placement.distributed)
    fused = (
        in_memory
        and training.input_pipeline == "tensor"
        and not placement.distributed
        and per_call > 1
        and (machine.backend == "tensorflow" or _jax_fuses(layer_kinds, augmented_sample_bytes))
        and not machine.gpu
    )
    block_steps = per_call if fused else 0
    if fused and augmented_sample_bytes:
        block_steps = min(block_steps, max(1, AUGMENTED_BLOCK_BYTES // (batch_size * augmented_sample_bytes)))
    return ExecutionPlan(
        rows=rows,
        batch_size=batch_size,
        steps=steps,
        steps_per_execution=1 if fused else per_call,
        block_steps=block_steps,
        jit=jit,
        shuffle=training.shuffle and not full_batch,
        inputs_only=placement.multi_worker,
    )


def _jax_fuses(layer_kinds: set[str], augmented_sample_bytes: int) -> bool:
    """JAX's fused blocks (jax_fused.py) for models XLA runs fast on a CPU, without augmentation
    (whose blocks carry TensorFlow-augmented batches): a conv model on the MNIST conv config ran
    15-24 s per epoch in blocks against 13.5 s in Keras's own loop."""
    return not augmented_sample_bytes and not layer_kinds & SLOWER_UNDER_XLA_ON_CPU


def plan_for_model(
    model: keras.Model,
    training: TrainingConfig,
    full_batch: bool,
    train_input: np.ndarray | Stream,
    placement: Placement,
    augmented: bool = False,
) -> ExecutionPlan:
    """`plan_execution` for this model, its training input (arrays or a shard stream) and this machine."""
    in_memory = isinstance(train_input, np.ndarray)
    rows = len(train_input) if isinstance(train_input, np.ndarray) else train_input.rows
    sample_bytes = train_input[0].nbytes if augmented and isinstance(train_input, np.ndarray) else 0
    kinds = layer_kinds(model)
    return plan_execution(training, rows, full_batch, in_memory, kinds, placement, Machine.here(), sample_bytes)


def layer_kinds(model: keras.Layer) -> set[str]:
    """The class names of every layer inside `model`, nested models (encoder, decoder) included."""
    kinds = set()
    for layer in getattr(model, "layers", []):
        kinds.add(type(layer).__name__)
        kinds |= layer_kinds(layer)
    return kinds


def fused_train_function(
    model: keras.Model,
    x: np.ndarray,
    jit_compile: bool,
    noise: NoiseSpec | None = None,
    seed: int = 0,
    augmented_blocks: bool = False,
) -> Any:
    """A replacement for Keras's train function that runs a whole block of steps (see
    `feeds.step_blocks`) as one compiled program, gathering each batch from the training array inside
    it. Keras's own multi-step loop calls a separately compiled step, and fetches a batch, for
    every step: on small dense models that costs as much as the arithmetic. Each step is still
    the model's own `train_step`, so losses, metrics and optimizer updates are Keras's. With
    `noise` (denoising), each step's inputs are corrupted inside the program, drawn from `seed` and
    the optimizer's step count: fresh every step and epoch, the same on a rerun (and on a resume,
    whose optimizer continues the count). With `augmented_blocks`, the blocks hold the (augmented)
    batches themselves instead of row indices (see feeds.step_blocks); noise applies after.

    A block runs as one or more calls of at most about `SECONDS_PER_CALL` each (the first call
    takes a single step, then the count follows the measured step time), so that Ctrl-C and
    SIGTERM, which Python only sees between calls, are honoured within seconds whatever the model.
    """
    tf = import_tensorflow()
    rows = tensor_view(x)
    if not model.optimizer.built:  # variables made while tracing would cost a second trace
        model.optimizer.build(model.trainable_variables)

    blocks = (
        tf.TensorSpec((None, None, *x.shape[1:]), tf.float32)
        if augmented_blocks
        else tf.TensorSpec((None, None), tf.int32)
    )
    signature = [blocks, tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)]

    @tf.function(jit_compile=jit_compile, input_signature=signature)
    def run_steps(block: Any, start: Any, stop: Any) -> Any:
        def one_step(step: Any) -> Any:
            batch = block[step] if augmented_blocks else tf.gather(rows, block[step])
            inputs = batch
            if noise is not None:
                draw = tf.stack([tf.constant(seed, tf.int64), tf.cast(model.optimizer.iterations, tf.int64)])
                inputs = corrupt_tensor(batch, noise, draw)
            model.train_step((inputs, batch))
            return step + 1

        tf.while_loop(lambda step: step < stop, one_step, [start])
        return model.get_metrics_result()

    return _paced(run_steps)


def fused_test_function(model: keras.Model, validation: InMemoryValidation, jit_compile: bool) -> Any:
    """A replacement for Keras's test function that evaluates the whole in-memory validation set
    in one call per epoch (fit hands it a placeholder iterator, see feeds.InMemoryValidation):
    compiled loops of the model's own `test_step` over batches of VALIDATION_BATCH_SIZE rows, and
    one call for the last, shorter batch. Keras's evaluate makes a new tf.data iterator every
    epoch; on a few hundred rows that cost three times the forward pass (about 10 ms)."""
    tf = import_tensorflow()
    inputs, targets = tensor_view(validation.inputs), tensor_view(validation.targets)
    rows, size = len(validation.inputs), VALIDATION_BATCH_SIZE
    full, rest = divmod(rows, size)

    @tf.function(jit_compile=jit_compile)
    def full_batches() -> Any:
        def one_batch(batch: Any) -> Any:
            index = batch * size + tf.range(size)
            model.test_step((tf.gather(inputs, index), tf.gather(targets, index)))
            return batch + 1

        tf.while_loop(lambda batch: batch < full, one_batch, [tf.constant(0)])
        return model.get_metrics_result()

    @tf.function(jit_compile=jit_compile)
    def last_batch() -> Any:
        model.test_step((inputs[full * size :], targets[full * size :]))
        return model.get_metrics_result()

    def test_function(iterator: Any) -> Any:
        logs = full_batches() if full else None
        return last_batch() if rest else logs

    return test_function


def _paced(run_steps: Any) -> Any:
    """Keras's train function over `run_steps(block, start, stop)`: a block's steps in calls of
    about `SECONDS_PER_CALL` each, a pending interrupt raised between them."""
    tf = import_tensorflow()
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
            raise_pending_interrupt()
            start = stop

    return train_function


class CallPace:
    """How many steps one compiled call may run so that it lasts about `SECONDS_PER_CALL`."""

    def __init__(self) -> None:
        self.steps_per_call = 1  # the first call also compiles: one step, then measured

    def observe(self, steps: int, seconds: float) -> None:
        self.steps_per_call = max(1, int(SECONDS_PER_CALL * steps / max(seconds, 1e-9)))


def raise_pending_interrupt() -> None:
    interrupt = pending_interrupt()
    if interrupt is not None:  # a signal whose exception native code swallowed
        raise interrupt
