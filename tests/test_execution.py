"""The execution plan: how fit runs the steps, decided from the config, the data and the machine."""

from __future__ import annotations

import pytest

from aecli.config import TrainingConfig
from aecli.distribute import Placement
from aecli.execution import ExecutionPlan, Machine, plan_execution

CPU = Machine("tensorflow", gpu=False)
DENSE = {"Dense", "InputLayer"}


class _TwoReplicas:
    num_replicas_in_sync = 2


def plan(
    rows: int = 1000,
    full_batch: bool = False,
    in_memory: bool = True,
    kinds: set[str] = DENSE,
    placement: Placement | None = None,
    machine: Machine = CPU,
    augmented_sample_bytes: int = 0,
    **training: object,
) -> ExecutionPlan:
    settings = TrainingConfig.model_validate({"batch_size": 32, "steps_per_execution": 8, **training})
    placement = placement or Placement()
    return plan_execution(settings, rows, full_batch, in_memory, kinds, placement, machine, augmented_sample_bytes)


def test_in_memory_dense_data_on_a_cpu_trains_in_fused_xla_blocks() -> None:
    chosen = plan()
    assert (chosen.batch_size, chosen.steps) == (32, 32)  # ceil(1000 / 32)
    assert chosen.fused and chosen.block_steps == 8 and chosen.steps_per_execution == 1
    assert chosen.jit.enabled and chosen.shuffle and not chosen.inputs_only
    after = chosen.steps_after()
    assert [after(block) for block in range(5)] == [8, 16, 24, 31, 32]  # 31 full batches, then the short one


def test_jax_on_a_cpu_trains_in_fused_blocks_too() -> None:
    chosen = plan(machine=Machine("jax", gpu=False))
    assert chosen.fused and chosen.block_steps == 8 and chosen.steps_per_execution == 1 and chosen.jit.enabled


def test_blocks_never_exceed_an_epoch_and_convolutions_skip_xla_on_a_cpu() -> None:
    chosen = plan(rows=64, kinds={"Conv2D", "Dense"})
    assert chosen.block_steps == 2 and not chosen.jit.enabled and "Conv2D" in chosen.jit.reason


@pytest.mark.parametrize(
    ("changes", "per_call"),
    [
        ({"in_memory": False}, 8),  # a streamed shard folder: Keras's loop over tf.data
        ({"input_pipeline": "arrays"}, 8),
        ({"machine": Machine("tensorflow", gpu=True)}, 8),  # the host array would be copied every call
        ({"machine": Machine("jax", gpu=False), "augmented_sample_bytes": 3136}, 8),  # TF-augmented blocks
        ({"machine": Machine("jax", gpu=True)}, 8),
        ({"machine": Machine("jax", gpu=False), "kinds": {"Conv2D", "Dense"}}, 8),  # slower in XLA blocks
        ({"machine": Machine("torch", gpu=False)}, 1),  # Keras's torch trainer runs one step per call
        ({"placement": Placement(strategy=_TwoReplicas())}, 1),  # Keras's multi-step loop fails distributed
    ],
)
def test_keras_runs_the_loop_where_fused_blocks_do_not_apply(changes: dict[str, object], per_call: int) -> None:
    chosen = plan(**changes)  # type: ignore[arg-type]
    assert not chosen.fused and chosen.block_steps == 0 and chosen.steps_per_execution == per_call
    assert chosen.steps_after() is None


def test_distributed_training_turns_xla_off_and_multi_worker_feeds_inputs_only() -> None:
    chosen = plan(placement=Placement(strategy=_TwoReplicas(), chief=False, workers=2, multi_worker=True))
    assert not chosen.jit.enabled and chosen.inputs_only


def test_full_batch_gradient_descent_takes_one_unshuffled_step_per_epoch() -> None:
    chosen = plan(rows=500, full_batch=True)
    assert (chosen.batch_size, chosen.steps, chosen.shuffle, chosen.fused) == (500, 1, False, False)


def test_the_plan_hands_its_batching_to_the_feeds() -> None:
    settings = TrainingConfig.model_validate({"batch_size": 32, "steps_per_execution": 8, "seed": 7})
    options = plan(seed=7).feed_options(settings, noise=None)
    assert (options.batch_size, options.block_steps, options.seed, options.pipeline) == (32, 8, 7, "tensor")


def test_augmented_blocks_are_cut_to_a_bounded_size() -> None:
    from aecli.execution import AUGMENTED_BLOCK_BYTES

    small = plan(batch_size=32, steps_per_execution=64, rows=10_000, augmented_sample_bytes=28 * 28 * 4)
    assert small.block_steps == 64  # 64 steps x 32 MNIST images: 6.4 MB
    large = plan(batch_size=128, steps_per_execution=64, rows=10_000, augmented_sample_bytes=128 * 128 * 3 * 4)
    assert large.fused and large.block_steps == max(1, AUGMENTED_BLOCK_BYTES // (128 * 128 * 128 * 3 * 4)) == 1
    assert plan(batch_size=128, steps_per_execution=64, rows=10_000).block_steps == 64  # no augmentation: indices


@pytest.mark.parametrize("jit", [False, True])
def test_the_fused_validation_pass_gives_kerass_evaluate_loss(jit: bool) -> None:
    import keras
    import numpy as np

    from aecli.execution import fused_test_function
    from aecli.feeds import VALIDATION_BATCH_SIZE, InMemoryValidation

    rng = np.random.default_rng(0)
    rows = 2 * VALIDATION_BATCH_SIZE + 452  # two full batches and a shorter last one
    targets = rng.random((rows, 12), dtype=np.float32)
    inputs = (targets + rng.normal(0, 0.3, targets.shape)).astype(np.float32)  # noisy, as for denoising
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4, "relu"), keras.layers.Dense(12)])
    model.compile("adam", "mse", jit_compile=jit)
    expected = model.evaluate(inputs, targets, batch_size=VALIDATION_BATCH_SIZE, verbose=0, return_dict=True)
    model.reset_metrics()
    logs = fused_test_function(model, InMemoryValidation(inputs, targets), jit)(iter(()))
    assert float(logs["loss"]) == pytest.approx(expected["loss"], rel=1e-6)
    model.reset_metrics()
    short = InMemoryValidation(inputs[:300], targets[:300])  # shorter than one batch: the last call alone
    assert float(fused_test_function(model, short, jit)(iter(()))["loss"]) == pytest.approx(
        model.evaluate(inputs[:300], targets[:300], verbose=0), rel=1e-6
    )
