"""training.robust: the trimmed loss leaves each batch's worst rows out, survives a checkpoint's
save and load (resume), and is refused where a model computes its own loss."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from aecli.config import load_config
from aecli.errors import ConfigError
from aecli.losses import TrimmedLoss
from tests.conftest import write_config


def test_the_worst_rows_of_a_batch_are_left_out() -> None:
    y_true = np.zeros((10, 4, 2), np.float32)
    y_pred = np.sqrt(np.arange(1, 11, dtype=np.float32))[:, None, None] * np.ones((10, 4, 2), np.float32)
    trimmed = TrimmedLoss(keras.losses.MeanSquaredError(), 0.2)  # per-row mse 1..10: keep 1..8
    assert float(trimmed(y_true, y_pred)) == pytest.approx(np.mean(np.arange(1, 9)), rel=1e-6)
    absolute = TrimmedLoss(keras.losses.MeanAbsoluteError(), 0.45)  # |error| sqrt(1..10): keep floor(5.5) = 5
    assert float(absolute(y_true, y_pred)) == pytest.approx(np.mean(np.sqrt(np.arange(1, 6))), rel=1e-6)


def test_training_compiles_it_and_a_resumed_run_gets_it_back(cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"training": {"epochs": 1, "robust": {"trim": 0.25}}})
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    resumed = keras.saving.load_model(run / "checkpoints" / "last.keras")  # as train --resume loads it
    assert isinstance(resumed.loss, TrimmedLoss) and resumed.loss.trim == 0.25
    assert isinstance(resumed.loss.base, keras.losses.MeanSquaredError)


def test_it_is_refused_where_the_model_computes_its_own_loss(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, {"training": {"robust": True}})).training.robust.trim == 0.1
    with pytest.raises(ConfigError, match="training.robust: trims the loss of array"):
        load_config(write_config(tmp_path, {"model": {"kind": "vae"}, "training": {"robust": True}}))
    with pytest.raises(ConfigError, match="less than 0.5"):
        load_config(write_config(tmp_path, {"training": {"robust": {"trim": 0.5}}}))
