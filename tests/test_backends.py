"""runtime.backend: training on every installed Keras backend and loading across backends."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aecli.backend import select_backend
from aecli.errors import ConfigError
from tests.conftest import write_config

OTHER_BACKENDS = [
    pytest.param("jax", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")),
    pytest.param(
        "torch",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("torch") is None, reason="torch not installed (pip install 'aecli[torch]')"
        ),
    ),
]
MODELS = {
    "dense": {"model": {"encoder": [32], "latent_dim": 4}},
    "vae": {"model": {"kind": "vae", "body": "conv", "filters": [8], "latent_dim": 2}, "loss": "bce"},
}


def aecli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    return subprocess.run([sys.executable, "-m", "aecli", *map(str, args)], capture_output=True, text=True, env=env)


def last_line(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_train_on_backend_and_load_under_tensorflow(backend: str, kind: str, cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, {**MODELS[kind], "training": {"epochs": 3}})
    run = last_line(aecli("train", config, "--backend", backend, "--runs-dir", tmp_path / "runs", "--quiet"))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["backend"] == backend and backend in info["versions"]
    rows = (run / "history.csv").read_text().splitlines()[1:]
    assert float(rows[-1].split(",")[1]) < float(rows[0].split(",")[1])  # loss falls
    # The same run evaluated by its own backend (subprocess) and by TensorFlow (this process).
    native = last_line(aecli("evaluate", run, "--out", tmp_path / "native"))
    result = cli("evaluate", run, "--backend", "tensorflow", "--out", tmp_path / "tf")
    assert result.exit_code == 0, result.output
    mse = [
        json.loads((folder / "metrics.json").read_text())["reconstruction"]["mse"]
        for folder in (native, tmp_path / "tf")
    ]
    assert mse[0] == pytest.approx(mse[1], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_tensorflow_run_loads_on_another_backend(backend: str, kind: str, cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, {**MODELS[kind], "training": {"epochs": 2}})
    trained = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert trained.exit_code == 0, trained.output
    run = Path(trained.stdout.strip().splitlines()[-1])
    assert cli("evaluate", run, "--out", tmp_path / "tf").exit_code == 0
    other = last_line(aecli("evaluate", run, "--backend", backend, "--out", tmp_path / "other"))
    mse = [
        json.loads((folder / "metrics.json").read_text())["reconstruction"]["mse"]
        for folder in (tmp_path / "tf", other)
    ]
    assert mse[0] == pytest.approx(mse[1], rel=1e-4)


def test_a_missing_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ConfigError, match=r"runtime.backend torch: torch is not installed; pip install 'aecli\[torch\]'"
    ):
        select_backend("torch")


def test_the_backend_cannot_change_once_keras_runs() -> None:
    import keras

    assert keras.backend.backend() == "tensorflow"
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax not installed")
    with pytest.raises(ConfigError, match="Keras already runs on tensorflow in this process"):
        select_backend("jax")
