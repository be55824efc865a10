"""`aecli export`: the exported graph, run by each format's own runtime (TensorFlow, ONNX Runtime,
the LiteRT interpreter), gives the scores, flags, reconstructions and codes aecli's Keras path
gives, from raw rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from aecli.calibration import threshold_in_use
from aecli.cli import app
from aecli.commands.export import ExportRequest, export_run
from aecli.evaluation import predict_batched
from aecli.export import UNSUPPORTED, ExportError
from aecli.scoring import array_chunks, element_names, score_chunks
from aecli.trained_run import load_model, open_trained_run
from tests.conftest import write_config

FORMATS = ("savedmodel", "onnx", "litert")


def _train(folder: Path, overrides: dict[str, Any], name: str) -> Path:
    config = write_config(folder, overrides, f"{name}.yaml")
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(folder / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def _sequences(path: Path) -> Path:
    """Two shapes of noisy waves, one per line with the label first (the UCR layout)."""
    rng = np.random.default_rng(0)
    steps = np.linspace(0, 2 * np.pi, 24)
    with path.open("w") as handle:
        for i in range(160):
            wave = 3 * np.sin(steps * (1 + i % 2) + rng.uniform(0, 6)) + 5 + rng.normal(0, 0.1, 24)
            handle.write(" ".join([str(i % 2), *(f"{v:.4f}" for v in wave)]) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export_runs")
    short = {"training": {"epochs": 2}}
    sequences = {"source": str(_sequences(folder / "waves.txt")), "sequences": True, "limit": None}
    return {
        "dense": trained_run,
        "conv": _train(folder, {**short, "model": {"kind": "conv", "filters": [8, 8], "latent_dim": 8}}, "conv"),
        "vae": _train(folder, {**short, "model": {"kind": "vae", "encoder": [32], "latent_dim": 4}}, "vae"),
        "conv1d": _train(
            folder, {**short, "data": sequences, "model": {"kind": "conv1d", "filters": [8, 8], "latent_dim": 4}}, "c1"
        ),
        "lstm": _train(
            folder, {"training": {"epochs": 1}, "data": sequences, "model": {"kind": "lstm", "encoder": [8]}}, "lstm"
        ),
    }


def _raw_rows(run_dir: Path) -> np.ndarray:
    run = open_trained_run(run_dir)
    rows = np.loadtxt(run.config.data.source)[:, 1:] if run.sample_shape == (24, 1) else load_digits().data
    return rows[:200].reshape(-1, *run.sample_shape).astype(np.float32)


def _keras_results(run_dir: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """What aecli score, reconstruct and embed compute for these raw rows."""
    run = open_trained_run(run_dir)
    in_use = threshold_in_use(run.path, run.metrics, None, None)
    model = load_model(run.path / "model.keras", compile=False)
    encoder = load_model(run.path / "encoder.keras", compile=False)
    names = element_names(run.sample_shape, None)
    shape, scaling = run.sample_shape, run.scaling
    (scored,) = score_chunks(
        array_chunks(x), model.predict_on_batch, shape, scaling, in_use.score, in_use.value, names, 0, "x"
    )
    scaled = run.scaling.apply(x)
    return {
        "score": scored.scores,
        "anomalous": scored.flagged,
        "reconstruction": run.scaling.invert(predict_batched(model, scaled).astype(np.float64)),
        "embedding": predict_batched(encoder, scaled).reshape(len(x), -1),
        "threshold": np.float64(in_use.value),
    }


def _runner(model_file: Path, fmt: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The exported file loaded by its own runtime, as a function of raw rows to named outputs."""
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(model_file))
        return lambda x: {name: value.numpy() for name, value in loaded.serve(tf.constant(x)).items()}
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return lambda x: dict(zip(names, session.run(names, {"inputs": x}), strict=True))
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(model_path=str(model_file)).get_signature_runner()
    return lambda x: dict(signature(inputs=x))


@pytest.mark.parametrize("kind", ["dense", "conv", "vae", "conv1d", "lstm"])
def test_exported_graphs_agree_with_keras_from_raw_rows(runs: dict[str, Path], kind: str, tmp_path: Path) -> None:
    run_dir = runs[kind]
    x = _raw_rows(run_dir)
    expected = _keras_results(run_dir, x)
    for fmt in FORMATS:
        if (fmt, kind) in UNSUPPORTED:
            with pytest.raises(ExportError, match=f"model kind {kind} cannot be exported to litert: .*Select ops"):
                export_run(ExportRequest(run_dir, fmt, tmp_path / fmt))
            assert not (tmp_path / fmt).exists()
            continue
        outcome = export_run(ExportRequest(run_dir, fmt, tmp_path / fmt))
        got = _runner(outcome.model_file, fmt)(x)
        assert set(got) == {"reconstruction", "score", "anomalous", "embedding"}, fmt
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-5, err_msg=f"{kind} {fmt}")
        clear = np.abs(expected["score"] - expected["threshold"]) > 1e-5  # (float32 rounding at the threshold)
        assert (got["anomalous"].astype(bool) == expected["anomalous"])[clear].all(), f"{kind} {fmt}"
        np.testing.assert_allclose(got["reconstruction"], expected["reconstruction"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["embedding"], expected["embedding"], rtol=1e-4, atol=1e-4)
        metadata = json.loads((outcome.folder / "metadata.json").read_text())
        assert metadata["threshold"]["value"] == pytest.approx(float(expected["threshold"]))
        assert metadata["input"]["shape"] == [None, *x.shape[1:]] and metadata["model_kind"] == kind


def test_a_dssim_run_exports_its_structural_score(tmp_path: Path) -> None:
    run_dir = _train(tmp_path, {"training": {"epochs": 2}, "anomaly": {"score": "dssim"}}, "dssim")
    x = _raw_rows(run_dir)
    expected = _keras_results(run_dir, x)
    outcome = export_run(ExportRequest(run_dir, "onnx", tmp_path / "onnx"))  # (one format: the graph is shared)
    got = _runner(outcome.model_file, "onnx")(x)
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-5)
    assert json.loads((outcome.folder / "metadata.json").read_text())["threshold"]["score"] == "dssim"


def test_the_onnx_file_carries_its_threshold_and_scaling(runs: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    outcome = export_run(ExportRequest(runs["dense"], "onnx", tmp_path / "onnx", threshold="value:0.5"))
    props = {entry.key: json.loads(entry.value) for entry in onnx.load(str(outcome.model_file)).metadata_props}
    assert props["aecli.threshold"] == {"score": "mse", "value": 0.5, "method": "0.5"}
    assert props["aecli.scaling"]["kind"] == open_trained_run(runs["dense"]).scaling.kind
    got = _runner(outcome.model_file, "onnx")(_raw_rows(runs["dense"]))
    assert (got["anomalous"] == (got["score"] > 0.5)).all()


def test_export_refusals_are_one_line_and_keep_what_exists(cli, trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = cli("export", trained_run, "--format", "onnx", "--out", taken)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    result = cli("export", trained_run, "--format", "tflite")
    assert result.exit_code == 2 and "expected one of savedmodel, onnx, litert" in result.stderr
    result = cli("export", tmp_path, "--format", "onnx")
    assert result.exit_code == 2 and "error:" in result.stderr
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *_: None if name == "tf2onnx" else object())
    result = cli("export", trained_run, "--format", "onnx", "--out", tmp_path / "new")
    assert result.exit_code == 2 and "pip install 'aecli[deploy]'" in result.stderr
    assert not (tmp_path / "new").exists()
