"""The fused training block and validation pass on JAX (execution.py holds TensorFlow's).

Keras's multi-step loop on JAX calls a jitted step from Python for every step and copies every
batch from the host. Here one jitted program runs a block of steps (`feeds.step_blocks`' index
blocks): a loop that gathers each batch on the device from the training array and calls the
model's own stateless `train_step`, so losses, metrics and optimizer updates are Keras's. The
state goes in and comes out as Keras's JAX trainer expects of its train function.

Imports JAX at module level: only training.py imports this, for a run on the JAX backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aecli.execution import CallPace
from aecli.feeds import VALIDATION_BATCH_SIZE, InMemoryValidation
from aecli.interrupts import pending_interrupt
from aecli.noise import NoiseSpec


def fused_train_function(model: Any, x: np.ndarray, noise: NoiseSpec | None = None, seed: int = 0) -> Callable:
    """Keras's JAX train function `(state, iterator) -> (logs, state)` over index blocks. A block
    runs in calls of about execution.SECONDS_PER_CALL; an interrupt ends the block early, so that
    Keras's own batch-end check raises it with the state in hand. Denoising draws each step's
    noise from (seed, the optimizer's step count): fresh every step, the same on a rerun."""
    # Built now from a real row: fit's own symbolic build would run the model on an index block.
    model._symbolic_build(data_batch=(x[:1], x[:1]))
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    rows = jnp.asarray(x)  # on the device once; an argument, not a constant baked into the program
    key = jax.random.PRNGKey(seed)

    def run_steps(state: Any, rows: Any, block: Any, start: Any, stop: Any, first_step: Any) -> Any:
        def one(i: Any, state: Any) -> tuple[Any, Any]:
            batch = jnp.take(rows, block[i], axis=0)
            inputs = batch if noise is None else _corrupt(batch, noise, jax.random.fold_in(key, first_step + i - start))
            logs, state = model.train_step(state, (inputs, batch))
            return logs, state

        logs, state = one(start, state)  # (outside the loop: it gives the logs their structure)
        return jax.lax.fori_loop(start + 1, stop, lambda i, carry: one(i, carry[1]), (logs, state))

    compiled = jax.jit(run_steps)
    pace = CallPace()
    done = [int(np.asarray(model.optimizer.iterations.value))]  # continues a resumed run's count

    def train_function(state: Any, iterator: Any) -> tuple[Any, Any]:
        block, steps = next(iterator)
        block, steps = jnp.asarray(block), int(steps)
        start = 0
        while True:
            stop = min(steps, start + pace.steps_per_call)
            started = time.perf_counter()
            logs, state = compiled(state, rows, block, jnp.int32(start), jnp.int32(stop), jnp.int32(done[0]))
            jax.block_until_ready(logs)
            pace.observe(stop - start, time.perf_counter() - started)
            done[0] += stop - start
            if stop == steps or pending_interrupt() is not None:
                return logs, state
            start = stop

    return train_function


def fused_test_function(model: Any, validation: InMemoryValidation) -> Callable:
    """Keras's JAX test function `(state, iterator) -> (logs, state)` over the in-memory validation
    rows, ignoring the placeholder iterator (see feeds.InMemoryValidation): one jitted loop of the
    model's own stateless `test_step` over batches of VALIDATION_BATCH_SIZE rows, then one call for
    the shorter last batch."""
    inputs, targets = jnp.asarray(validation.inputs), jnp.asarray(validation.targets)
    size = VALIDATION_BATCH_SIZE
    full, rest = divmod(len(validation.inputs), size)

    def batch(i: Any) -> tuple[Any, Any]:
        return (
            jax.lax.dynamic_slice_in_dim(inputs, i * size, size),
            jax.lax.dynamic_slice_in_dim(targets, i * size, size),
        )

    @jax.jit
    def full_batches(state: Any) -> Any:
        first = model.test_step(state, batch(0))  # (outside the loop: it gives the logs their structure)
        return jax.lax.fori_loop(1, full, lambda i, carry: model.test_step(carry[1], batch(i)), first)

    @jax.jit
    def last_batch(state: Any) -> Any:
        return model.test_step(state, (inputs[full * size :], targets[full * size :]))

    def test_function(state: Any, iterator: Any) -> tuple[Any, Any]:
        logs: Any = None
        if full:
            logs, state = full_batches(state)
        if rest:
            logs, state = last_batch(state)
        return logs, state

    return test_function


def _corrupt(x: Any, noise: NoiseSpec, key: Any) -> Any:
    """noise.corrupt_tensor with JAX's random numbers: the same three kinds, clipped to [0, 1]."""
    first, second = jax.random.split(key)
    if noise.kind == "gaussian":
        noisy = x + noise.amount * jax.random.normal(first, x.shape, x.dtype)
    elif noise.kind == "salt_pepper":
        hit = jax.random.uniform(first, x.shape) < noise.amount
        salt = (jax.random.uniform(second, x.shape) < 0.5).astype(x.dtype)
        noisy = jnp.where(hit, salt, x)
    else:
        noisy = jnp.where(jax.random.uniform(first, x.shape) < noise.amount, jnp.zeros_like(x), x)
    return jnp.clip(noisy, 0.0, 1.0)
