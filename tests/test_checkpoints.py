"""Checkpoints written at most every SPACING x a write's duration, with the epochs in between kept
in memory and written when training ends or is interrupted (aecli/checkpoints.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from aecli import checkpoints
from aecli.checkpoints import EpochCheckpoint
from aecli.config import validate_config
from aecli.data import load_dataset
from aecli.models import build_autoencoder
from aecli.training import fit_autoencoder


def kernel_in(path: Path) -> np.ndarray:
    import keras

    return keras.saving.load_model(path).layers[0].kernel.numpy()


def tiny_model():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def epoch(callback: EpochCheckpoint, model, index: int, value: float, history: list) -> np.ndarray:
    """Pretend epoch `index` trained the kernel to a new value and finished with loss `value`."""
    kernel = np.full((2, 2), float(index + 1), dtype="float32")
    model.layers[0].kernel.assign(kernel)
    history.append({"epoch": index + 1, "loss": value, "val_loss": value})
    callback.on_epoch_end(index, {"val_loss": value, "loss": value})
    return kernel


def test_epochs_between_writes_stay_in_memory_until_training_ends(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoints, "SPACING", 1e9)  # after the first write, none is due again
    model, history = tiny_model(), []
    callback = EpochCheckpoint(tmp_path, "val_loss", history, (True, True), None)
    callback.set_model(model)
    callback.set_params({"epochs": 10})
    first = epoch(callback, model, 0, 0.5, history)
    best = epoch(callback, model, 1, 0.4, history)  # improves: kept as best and last
    last = epoch(callback, model, 2, 0.6, history)  # worse: kept as last only
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1
    np.testing.assert_array_equal(kernel_in(tmp_path / "last.keras"), first)

    live = np.full((2, 2), -7.0, dtype="float32")  # training went on, mid-epoch
    model.layers[0].kernel.assign(live)
    callback.on_train_end()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 3 and [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["best"] == 0.4
    np.testing.assert_array_equal(kernel_in(tmp_path / "last.keras"), last)
    np.testing.assert_array_equal(kernel_in(tmp_path / "best.keras"), best)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), live)  # the live values are back
    written = {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    callback.flush()  # nothing left in memory: nothing written again
    assert {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == written


def test_a_due_write_carries_the_best_epoch_kept_in_memory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoints, "SPACING", 1e9)
    model, history = tiny_model(), []
    callback = EpochCheckpoint(tmp_path, "val_loss", history, (True, True), None)
    callback.set_model(model)
    callback.set_params({"epochs": 4})
    epoch(callback, model, 0, 0.5, history)
    best = epoch(callback, model, 1, 0.3, history)
    epoch(callback, model, 2, 0.6, history)
    final = epoch(callback, model, 3, 0.7, history)  # the last epoch is always written
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 4
    np.testing.assert_array_equal(kernel_in(tmp_path / "last.keras"), final)
    np.testing.assert_array_equal(kernel_in(tmp_path / "best.keras"), best)
    assert callback.pending_best is None and callback.pending_last is None


def digits_fit(tmp_path: Path, epochs: int, reporter=None):
    config = validate_config(
        {"data": {"limit": 300}, "model": {"encoder": [16], "latent_dim": 4}, "training": {"epochs": epochs}}
    )
    data = load_dataset(config.data, seed=0)
    model = build_autoencoder(config.model, (8, 8, 1)).model
    return fit_autoencoder(
        model, data.x_train, data.x_val, config.training, config.optimizer, config.loss, tmp_path, reporter
    )


class StopAt:
    """A progress reporter that presses Ctrl-C as epoch `epoch` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt

    def step_finished(self, step: int, loss: float | None) -> None: ...
    def epoch_finished(self, epoch: int, epochs: int, row: dict[str, float]) -> None: ...
    def training_finished(self) -> None: ...


@pytest.mark.slow
def test_an_interrupted_fit_writes_every_finished_epoch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoints, "SPACING", 1e9)  # only epoch 1 would be written on its own
    with pytest.raises(KeyboardInterrupt):
        digits_fit(tmp_path, epochs=8, reporter=StopAt(5))
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 4 and len(state["history"]) == 4


@pytest.mark.slow
def test_fast_epochs_are_not_all_written_and_their_seconds_include_the_writes(tmp_path: Path, monkeypatch) -> None:
    writes: list[int] = []
    original = EpochCheckpoint._write_last

    def slow_write(self: EpochCheckpoint, epoch: int, history: list) -> None:
        writes.append(epoch)
        time.sleep(0.2)
        original(self, epoch, history)

    monkeypatch.setattr(EpochCheckpoint, "_write_last", slow_write)
    result = digits_fit(tmp_path, epochs=6)
    assert writes[0] == 1 and writes[-1] == 6 and len(writes) < 6  # 0.2 s writes: due again after 2 s
    written = {row["epoch"] for row in result.history if row["epoch"] in writes}
    assert all(row["seconds"] >= 0.2 for row in result.history if row["epoch"] in written)
    assert json.loads((tmp_path / "checkpoints" / "state.json").read_text())["epoch"] == 6
