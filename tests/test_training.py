"""Every optimizer and every loss trains a small model on digits with falling loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aecli.config import OPTIMIZER_DEFAULTS, validate_config
from aecli.data import load_dataset
from aecli.models import build_autoencoder
from aecli.training import build_optimizer, fit_autoencoder, seed_everything

# Learning rates that make each optimizer move within a handful of epochs on 300 digits.
LEARNING_RATES = {"gd": 1.0, "sgd": 0.5, "momentum": 0.1, "nesterov": 0.1, "adagrad": 0.05}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    dataset = load_dataset(validate_config({"data": {"limit": 300}}).data, seed=0)
    assert dataset.x_val is not None
    return dataset.x_train, dataset.x_val


def train(raw: dict, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> list[dict[str, float]]:
    raw = {"model": {"encoder": [32], "latent_dim": 8}, "training": {"epochs": 6, "batch_size": 32}, **raw}
    config = validate_config(raw)
    seed_everything(config.training.seed)
    model = build_autoencoder(config.model, (8, 8, 1)).model
    result = fit_autoencoder(model, *digits, config.training, config.optimizer, config.loss, tmp_path)
    assert result.epochs_run == 6 and len(result.history) == 6
    return result.history


@pytest.mark.parametrize("name", list(OPTIMIZER_DEFAULTS))
def test_every_optimizer_lowers_the_loss(name: str, digits: tuple, tmp_path: Path) -> None:
    optimizer = {"name": name, "learning_rate": LEARNING_RATES.get(name, 0.01)}
    history = train({"optimizer": optimizer}, digits, tmp_path)
    # Full-batch gd and adagrad take small steps: a steady fall is what matters, not its size.
    assert history[-1]["loss"] < 0.98 * history[0]["loss"], history
    assert history[-1]["val_loss"] < history[0]["val_loss"]


@pytest.mark.parametrize("loss", ["mse", "bce", "mae", "huber"])
def test_every_loss_lowers_the_loss(loss: str, digits: tuple, tmp_path: Path) -> None:
    history = train({"loss": loss, "optimizer": {"learning_rate": 0.01}}, digits, tmp_path)
    assert history[-1]["loss"] < 0.9 * history[0]["loss"], history


def test_gd_takes_one_step_per_epoch(digits: tuple, tmp_path: Path) -> None:
    config = validate_config({"optimizer": {"name": "gd", "learning_rate": 1.0}, "training": {"epochs": 3}})
    seed_everything(0)
    model = build_autoencoder(config.model, (8, 8, 1)).model
    fit_autoencoder(model, *digits, config.training, config.optimizer, config.loss, tmp_path)
    assert int(model.optimizer.iterations.numpy()) == 3


def test_optimizer_knobs_reach_keras() -> None:
    nesterov = build_optimizer(validate_config({"optimizer": {"name": "nesterov", "momentum": 0.8}}).optimizer)
    assert nesterov.nesterov and nesterov.momentum == pytest.approx(0.8)
    adamw = build_optimizer(validate_config({"optimizer": {"name": "adamw", "clipnorm": 1.0}}).optimizer)
    assert adamw.clipnorm == 1.0 and adamw.weight_decay == pytest.approx(0.004)


def test_early_stopping_and_checkpoints(digits: tuple, tmp_path: Path) -> None:
    raw = {
        "model": {"encoder": [16], "latent_dim": 4},
        "optimizer": {"learning_rate": 1e-9},  # no progress, so patience runs out
        "training": {"epochs": 20, "early_stopping": {"patience": 2, "min_delta": 0.01}},
    }
    config = validate_config(raw)
    model = build_autoencoder(config.model, (8, 8, 1)).model
    result = fit_autoencoder(model, *digits, config.training, config.optimizer, config.loss, tmp_path)
    assert result.epochs_run == 3
    assert (tmp_path / "checkpoints" / "best.keras").exists()
    assert (tmp_path / "checkpoints" / "last.keras").exists()


def test_tensorboard_logs_under_the_run(digits: tuple, tmp_path: Path) -> None:
    config = validate_config(
        {"model": {"encoder": [8], "latent_dim": 2}, "training": {"epochs": 1, "tensorboard": True}}
    )
    model = build_autoencoder(config.model, (8, 8, 1)).model
    fit_autoencoder(model, *digits, config.training, config.optimizer, config.loss, tmp_path)
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_fast_path_matches_the_plain_step_loop(digits: tuple, tmp_path: Path) -> None:
    """steps_per_execution + XLA change how steps are dispatched, not what they compute."""
    losses = []
    for fast in (True, False):
        raw = {
            "model": {"encoder": [32], "latent_dim": 8},
            "training": {"epochs": 3, "steps_per_execution": 64 if fast else 1, "jit_compile": fast},
        }
        config = validate_config(raw)
        seed_everything(0)
        model = build_autoencoder(config.model, (8, 8, 1)).model
        run_dir = tmp_path / str(fast)
        run_dir.mkdir()
        result = fit_autoencoder(model, *digits, config.training, config.optimizer, config.loss, run_dir)
        losses.append([row["val_loss"] for row in result.history])
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-3)


def test_input_pipelines_agree(digits: tuple, tmp_path: Path) -> None:
    """tensor and arrays gather the same shuffled batches; keras's own slicing trains too."""
    curves = {}
    for kind in ("tensor", "arrays", "keras"):
        config = validate_config(
            {"model": {"encoder": [16], "latent_dim": 4}, "training": {"epochs": 2, "input_pipeline": kind}}
        )
        seed_everything(0)
        model = build_autoencoder(config.model, (8, 8, 1)).model
        run_dir = tmp_path / kind
        run_dir.mkdir()
        result = fit_autoencoder(model, *digits, config.training, config.optimizer, config.loss, run_dir)
        curves[kind] = [row["val_loss"] for row in result.history]
    # The same batches in the first epoch; later epochs are reshuffled (the fused blocks repeat
    # one iterator, the arrays pipeline starts a new one each epoch: different orders, same curve).
    np.testing.assert_allclose(curves["tensor"][0], curves["arrays"][0], rtol=1e-5)
    np.testing.assert_allclose(curves["tensor"], curves["arrays"], rtol=1e-2)
    assert curves["keras"][-1] < curves["keras"][0]


def test_the_fast_pipeline_shares_the_training_array_instead_of_copying_it() -> None:
    from aecli.data import TENSOR_ALIGNMENT, Scaling
    from aecli.feeds import tensor_view

    scaled = Scaling("none", np.zeros((), np.float32), np.ones((), np.float32)).apply(np.ones((5, 3), np.uint8))
    assert scaled.dtype == np.float32 and scaled.ctypes.data % TENSOR_ALIGNMENT == 0
    shared = tensor_view(scaled)
    scaled[0, 0] = 42.0
    assert float(shared[0, 0]) == 42.0  # the same memory: no copy was made
    unaligned = np.zeros(16 * 3 + 1, np.float32)[1:].reshape(16, 3)
    assert unaligned.ctypes.data % TENSOR_ALIGNMENT != 0
    copied = tensor_view(unaligned)
    unaligned[0, 0] = 7.0
    assert float(copied[0, 0]) == 0.0 and copied.shape == (16, 3)  # copied once into an aligned buffer


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set size from /proc")
def test_iterating_the_fast_pipeline_does_not_copy_the_training_array() -> None:
    """tf.data's default graph rewrites would serialize the pipeline with the captured array in it."""
    from aecli.data import aligned_empty
    from aecli.feeds import reconstruction_pipeline

    def resident_mib() -> float:
        line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    rows = aligned_empty((32_768, 1024), np.dtype(np.float32))  # 128 MiB
    rows[...] = 0.5
    before = resident_mib()
    batches = iter(reconstruction_pipeline(rows, rows, 256, shuffle=True, seed=0))
    batch_in, batch_out = next(batches)
    assert batch_in.shape == (256, 1024) and float(batch_out[0, 0]) == 0.5
    assert resident_mib() - before < 64


def test_step_blocks_cover_every_row_once_per_epoch_in_padded_blocks() -> None:
    from aecli.feeds import step_blocks

    ordered = [(block.numpy().tolist(), int(steps)) for block, steps in step_blocks(10, 3, 2, False, 0)]
    assert ordered == [([[0, 1, 2], [3, 4, 5]], 2), ([[6, 7, 8], [0, 0, 0]], 1), ([[9]], 1)]
    blocks = step_blocks(100, 7, 4, True, 0)
    epochs = []
    for _ in range(2):
        rows = [row for block, steps in blocks for batch in block.numpy()[: int(steps)] for row in batch]
        assert sorted(rows) == list(range(100))
        epochs.append(rows)
    assert epochs[0] != epochs[1]  # reshuffled every epoch


class StepRecorder:
    """A progress reporter that keeps the step numbers it is told."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def epoch_started(self, *args: object) -> None: ...

    def step_finished(self, step: int, loss: float | None) -> None:
        self.steps.append(step)

    def epoch_finished(self, *args: object) -> None: ...

    def training_finished(self) -> None: ...


def test_fused_blocks_train_like_kerass_own_loop(tmp_path: Path) -> None:
    """Blocks of steps in one compiled call (with a padded block and a short last batch) take
    the same steps as Keras's loop over the same batches, and report progress in steps."""
    rows = np.random.default_rng(0).random((1000, 20)).astype(np.float32)  # 20 batches of 48, then 40 rows
    runs = {}
    for pipeline in ("tensor", "arrays"):  # tensor trains in fused blocks; arrays through Keras's loop
        config = validate_config(
            {
                "model": {"encoder": [16], "latent_dim": 4},
                "training": {
                    "epochs": 3,
                    "batch_size": 48,
                    "steps_per_execution": 8,
                    "input_pipeline": pipeline,
                    "shuffle": False,  # the same batches every epoch on both sides
                },
            }
        )
        seed_everything(0)
        model = build_autoencoder(config.model, (20,)).model
        reporter = StepRecorder()
        run_dir = tmp_path / pipeline
        run_dir.mkdir()
        result = fit_autoencoder(model, rows, None, config.training, config.optimizer, config.loss, run_dir, reporter)
        assert int(model.optimizer.iterations) == 3 * 21
        if pipeline == "tensor":
            assert model.train_function is None  # the fused function (index blocks) is not left behind
        runs[pipeline] = ([row["loss"] for row in result.history], reporter.steps)
    np.testing.assert_allclose(runs["tensor"][0], runs["arrays"][0], rtol=1e-5)
    assert runs["tensor"][1] == [8, 16, 20, 21] * 3


def test_fused_blocks_cut_into_short_calls_train_the_same_steps(tmp_path: Path, monkeypatch) -> None:
    """A block whose steps are slow runs as several calls (each checks for a pending interrupt
    between them), taking exactly the steps one call would."""
    import aecli.execution

    rows = np.random.default_rng(0).random((1000, 20)).astype(np.float32)
    config = validate_config(
        {
            "model": {"encoder": [16], "latent_dim": 4},
            "training": {"epochs": 2, "batch_size": 48, "steps_per_execution": 8},
        }
    )
    losses = {}
    for seconds in (60.0, 0.0):  # 0: every call takes a single step
        monkeypatch.setattr(aecli.execution, "SECONDS_PER_CALL", seconds)
        seed_everything(0)
        model = build_autoencoder(config.model, (20,)).model
        run_dir = tmp_path / str(seconds)
        run_dir.mkdir()
        result = fit_autoencoder(model, rows, None, config.training, config.optimizer, config.loss, run_dir)
        assert int(model.optimizer.iterations) == 2 * 21
        losses[seconds] = [row["loss"] for row in result.history]
    np.testing.assert_allclose(losses[0.0], losses[60.0], rtol=1e-5)


def test_an_interrupt_stops_a_fused_block_between_its_calls(tmp_path: Path, monkeypatch) -> None:
    import aecli.execution

    monkeypatch.setattr(aecli.execution, "SECONDS_PER_CALL", 0.0)
    checks = []

    def interrupt_on_third_check() -> type[KeyboardInterrupt] | None:
        checks.append(1)
        return KeyboardInterrupt if len(checks) >= 3 else None

    monkeypatch.setattr(aecli.execution, "pending_interrupt", interrupt_on_third_check)
    rows = np.random.default_rng(0).random((500, 20)).astype(np.float32)
    config = validate_config(
        {"model": {"encoder": [8], "latent_dim": 4}, "training": {"batch_size": 10, "steps_per_execution": 50}}
    )
    model = build_autoencoder(config.model, (20,)).model
    with pytest.raises(KeyboardInterrupt):
        fit_autoencoder(model, rows, None, config.training, config.optimizer, config.loss, tmp_path)
    assert int(model.optimizer.iterations) == 3  # three one-step calls of the first 50-step block
