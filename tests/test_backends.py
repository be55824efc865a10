"""runtime.backend: training on every installed Keras backend and loading across backends."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aecli.backend import select_backend
from aecli.errors import ConfigError
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[1]


def needs(backend: str) -> pytest.MarkDecorator:
    """Skip without the backend, except in CI, which installs every backend: there a missing one fails."""
    missing = importlib.util.find_spec(backend) is None and not os.environ.get("CI")
    return pytest.mark.skipif(
        missing, reason=f"{backend} not installed (make install-torch, or pip install 'aecli[{backend}]')"
    )


OTHER_BACKENDS = [pytest.param("jax", marks=needs("jax")), pytest.param("torch", marks=needs("torch"))]
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
@pytest.mark.parametrize("backend", OTHER_BACKENDS[:1])  # torch: see test_torch_trains_every_kind_...
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
@needs("jax")
def test_jax_trains_in_fused_blocks_like_kerass_own_loop(tmp_path: Path) -> None:
    """On JAX a block of steps runs as one jitted program (jax_fused.py): the same loss curve as
    Keras's step-by-step loop, and denoising draws its noise inside the block."""
    config = write_config(tmp_path, {**MODELS["dense"], "data": {"source": "digits"}, "training": {"epochs": 5}})
    losses = {}
    for label, extra in {"fused": [], "keras": ["--set", "training.steps_per_execution=1"]}.items():
        run = last_line(aecli("train", config, "--backend", "jax", "--runs-dir", tmp_path / label, "--quiet", *extra))
        info = json.loads((run / "run.json").read_text())
        assert (info["execution"]["fused_block_steps"] > 0) == (label == "fused")
        losses[label] = [float(row.split(",")[1]) for row in (run / "history.csv").read_text().splitlines()[1:]]
    assert losses["fused"][-1] < losses["fused"][0]
    assert losses["fused"][-1] == pytest.approx(losses["keras"][-1], rel=0.15)  # data order differs, not the curve
    noisy = ["--set", "training.noise.kind=gaussian", "--set", "training.noise.amount=0.3"]
    run = last_line(aecli("train", config, "--backend", "jax", "--runs-dir", tmp_path / "noisy", "--quiet", *noisy))
    info = json.loads((run / "run.json").read_text())
    rows = [float(row.split(",")[1]) for row in (run / "history.csv").read_text().splitlines()[1:]]
    assert info["execution"]["fused_block_steps"] > 0 and rows[-1] < rows[0]
    assert rows != losses["fused"]  # the same seed: only the noise differs


@needs("jax")
@pytest.mark.parametrize(("kind", "amount"), [("gaussian", 0.1), ("salt_pepper", 0.2), ("mask", 0.3)])
def test_jax_block_noise_has_the_distribution_of_the_numpy_draws(kind: str, amount: float) -> None:
    import jax

    from aecli.jax_fused import _corrupt
    from aecli.noise import NoiseSpec, corrupt

    x = np.full((400, 64), 0.5, np.float32)
    spec = NoiseSpec(kind, amount)
    ours = np.asarray(_corrupt(x, spec, jax.random.PRNGKey(3)))
    reference = corrupt(x, spec, np.random.default_rng(3))
    for draw in (ours, reference):  # changed share, and the changes' mean and spread, agree
        changed = draw != x
        assert changed.mean() == pytest.approx(1.0 if kind == "gaussian" else amount, abs=0.02)
    assert (ours - x).mean() == pytest.approx((reference - x).mean(), abs=0.02)
    assert (ours - x).std() == pytest.approx((reference - x).std(), rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vae"])  # aecli's own layers; dense runs cross backends in the tests below
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


@pytest.mark.slow
@needs("torch")
@needs("jax")
@pytest.mark.parametrize("kind", ["dense", "vae", "conv"])
def test_torch_trains_every_kind_and_its_runs_agree_on_every_backend(kind: str, cli, tmp_path: Path) -> None:
    """The commands that crashed the interpreter (a segfault exits -11, which fails here), then the
    run's reconstructions and codes computed by PyTorch, TensorFlow (this process) and JAX."""
    train = ["train", ROOT / "configs" / "digits.yaml", "--backend", "torch", "--set", "training.epochs=3"]
    run = last_line(aecli(*train, "--set", f"model.kind={kind}", "--runs-dir", tmp_path / "runs", "--quiet"))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["backend"] == "torch" and "torch" in info["versions"]
    outputs = {}
    for backend in ("torch", "tensorflow", "jax"):
        out = tmp_path / backend
        request = ("reconstruct", run, "--indices", "0,1,2", "--save-latent", "--backend", backend, "--out", out)
        if backend == "tensorflow":
            done = cli(*request)
            assert done.exit_code == 0, done.output
        else:
            assert aecli(*request).returncode == 0
        errors = [float(line.split(",")[-1]) for line in (out / "reconstructions.csv").read_text().splitlines()[1:]]
        outputs[backend] = (errors, np.load(out / "latent.npy"))
    for backend in ("tensorflow", "jax"):
        np.testing.assert_allclose(outputs[backend][0], outputs["torch"][0], rtol=1e-4)
        np.testing.assert_allclose(outputs[backend][1], outputs["torch"][1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@needs("torch")
def test_torch_evaluates_and_compares(tmp_path: Path) -> None:
    config = write_config(tmp_path, {**MODELS["dense"], "training": {"epochs": 2}})
    sweep = aecli("compare", config, "--vary", "optimizer.name=sgd,adam", "--backend", "torch", "--runs-dir", tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    runs = [path.parent for path in tmp_path.rglob("run.json")]
    assert len(runs) == 2 and all(json.loads((run / "run.json").read_text())["backend"] == "torch" for run in runs)
    evaluated = aecli("evaluate", runs[0], "--out", tmp_path / "eval")
    assert evaluated.returncode == 0, evaluated.stderr
    assert (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.slow
@needs("torch")
@pytest.mark.skipif(sys.platform != "linux", reason="glibc's dynamic linker reports the bindings")
def test_torch_and_tensorflow_each_run_their_own_native_code(tmp_path: Path) -> None:
    """No PyTorch library may resolve a symbol to TensorFlow's copy (see backend.py): on main
    before the fix, 123 did, and where the two were built differently that was a segfault."""
    trace = tmp_path / "bindings"
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    env.update(LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(trace))
    train = ["train", ROOT / "configs" / "digits.yaml", "--backend", "torch", "--set", "training.epochs=1"]
    command = [sys.executable, "-m", "aecli", *map(str, train), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    crossed = [
        line
        for part in tmp_path.glob("bindings.*")
        for line in part.read_text(errors="replace").splitlines()
        if "binding file" in line and "/torch/" in line.split(" to ")[0] and "tensorflow" in line.split(" to ")[-1]
    ]
    assert len(list(tmp_path.glob("bindings.*"))) > 0
    assert crossed == []


def test_torch_is_refused_once_tensorflow_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow  # noqa: F401  (this process has it: the refusal is what is tested)

    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ConfigError, match="TensorFlow is already loaded in this process"):
        select_backend("torch")


@needs("jax")
def test_jax_fused_validation_pass_gives_kerass_evaluate_loss() -> None:
    script = """
import numpy as np, keras
from aecli.feeds import VALIDATION_BATCH_SIZE, InMemoryValidation
from aecli.jax_fused import fused_test_function
rng = np.random.default_rng(0)
targets = rng.random((2 * VALIDATION_BATCH_SIZE + 452, 12), dtype=np.float32)  # two full batches and a short one
inputs = (targets + rng.normal(0, 0.3, targets.shape)).astype(np.float32)
model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4, "relu"), keras.layers.Dense(12)])
model.compile("adam", "mse")
expected = model.evaluate(inputs, targets, batch_size=VALIDATION_BATCH_SIZE, verbose=0)
model.reset_metrics()
state = tuple([v.value for v in group] for group in
              (model.trainable_variables, model.non_trainable_variables, model.metrics_variables))
logs, _ = fused_test_function(model, InMemoryValidation(inputs, targets))(state, None)
print(expected, float(logs["loss"]))
"""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    expected, fused = map(float, out.stdout.split()[-2:])
    assert fused == pytest.approx(expected, rel=1e-5)
