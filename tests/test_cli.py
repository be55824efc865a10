"""The CLI through Typer's runner: what users see, exit codes, and the run directory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from aecli.runs import REQUIRED_ARTIFACTS


def test_train_writes_a_complete_run(trained_run: Path) -> None:
    for artifact in (*REQUIRED_ARTIFACTS, "history.csv", "metrics.json", "errors.csv"):
        assert (trained_run / artifact).is_file(), artifact
    assert (trained_run / "checkpoints" / "best.keras").is_file()
    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] == "completed" and info["seed"] == 0
    assert set(info["versions"]) >= {"aecli", "tensorflow", "keras", "python"}
    assert info["data"]["sample_shape"] == [8, 8, 1]
    assert info["data"]["scaling"] == {"kind": "global", "offset": 0.0, "scale": 16.0}
    resolved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert resolved["model"]["decoder"] == [32] and resolved["optimizer"]["beta_2"] == 0.999


def test_metrics_report(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["n_samples"] == 80  # 20% of the 400-row limit
    assert set(metrics["reconstruction"]) == {"mse", "mae", "bce", "psnr"}
    assert set(metrics["error_quantiles"]) == {"p50", "p90", "p95", "p99", "max"}
    assert sum(entry["n"] for entry in metrics["per_class"].values()) == 80
    assert metrics["training"]["epochs_run"] == 4 and metrics["training"]["samples_per_second"] > 0
    assert metrics["train_errors"]["default_threshold"] == "fpr:0.05"  # auto: the run holds validation rows out
    with (trained_run / "errors.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 80 and set(rows[0]) == {"index", "source_row", "label", "mse", "mae", "bce"}
    mean_mse = np.mean([float(row["mse"]) for row in rows])
    assert mean_mse == pytest.approx(metrics["reconstruction"]["mse"], rel=1e-5)
    with (trained_run / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [row["epoch"] for row in history] == ["1", "2", "3", "4"]
    assert set(history[0]) == {"epoch", "loss", "val_loss", "learning_rate", "seconds"}


def test_saved_models_load_in_plain_keras_without_aecli(trained_run: Path, tmp_path: Path) -> None:
    """model/encoder/decoder.keras load with safe mode in a process that never imports aecli."""
    import keras

    from aecli.data import load_dataset
    from aecli.runs import read_run_info

    assert read_run_info(trained_run)["status"] == "completed"
    from aecli.config import load_config

    config = load_config(trained_run / "config.yaml")
    x_test = load_dataset(config.data, config.training.seed).x_test
    np.save(tmp_path / "x.npy", x_test)
    expected = keras.saving.load_model(trained_run / "model.keras").predict_on_batch(x_test)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, keras
        run, x = {str(trained_run)!r}, np.load({str(tmp_path / "x.npy")!r})
        model = keras.saving.load_model(run + "/model.keras", safe_mode=True)
        encoder = keras.saving.load_model(run + "/encoder.keras", safe_mode=True)
        decoder = keras.saving.load_model(run + "/decoder.keras", safe_mode=True)
        np.save({str(tmp_path / "full.npy")!r}, model.predict_on_batch(x))
        np.save({str(tmp_path / "chain.npy")!r}, decoder.predict_on_batch(encoder.predict_on_batch(x)))
        assert not any(name.startswith("aecli") for name in sys.modules)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "full.npy"), expected, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "chain.npy"), expected, atol=1e-5)


def test_last_stdout_line_is_the_run_dir_and_runs_never_collide(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config({"training": {"epochs": 1}})
    first = cli("train", config, "--runs-dir", tmp_path / "runs", "--name", "same")
    second = cli("train", config, "--runs-dir", tmp_path / "runs", "--name", "same", "--set", "training.seed=1")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    dirs = [Path(result.stdout.strip().splitlines()[-1]) for result in (first, second)]
    assert dirs[0] != dirs[1] and all(d.is_dir() and d.name.startswith("same-") for d in dirs)
    assert "epoch 1/1" in first.stdout
    assert yaml.safe_load((dirs[1] / "config.yaml").read_text())["training"]["seed"] == 1


def test_validate_prints_resolved_config_and_layer_table(cli, tiny_config) -> None:
    result = cli("validate", tiny_config(), "--set", "model.latent_dim=3")
    assert result.exit_code == 0, result.output
    assert "latent_dim: 3" in result.stdout and "decoder: [32]" in result.stdout
    # 64*32+32 + 32*3+3 + 3*32+32 + 32*64+64
    assert "total parameters: 4,419" in result.stdout


def test_schema_is_json(cli) -> None:
    result = cli("schema")
    assert result.exit_code == 0 and json.loads(result.stdout)["title"] == "AecliConfig"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"optimizer": {"learnig_rate": 0.1}},
            "error: optimizer.learnig_rate: unknown key; did you mean learning_rate?",
        ),
        ({"model": {"encoder": [0]}}, "error: model.encoder.0: input should be greater than 0, got 0"),
        ({"data": {"source": "missing.npz"}}, "error: data.source: no such file or folder: missing.npz"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(cli, tiny_config, tmp_path: Path, overrides, message) -> None:
    result = cli("train", tiny_config(overrides), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.strip() == message or result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bce_on_unbounded_data_is_refused_before_training(cli, tiny_config, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 3)) * 10)
    config = tiny_config(
        {
            "data": {"source": str(tmp_path / "x.npy"), "scaling": "none"},
            "model": {"output_activation": "sigmoid"},
            "loss": "bce",
        }
    )
    result = cli("train", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "bce needs targets in [0,1]" in result.stderr


def test_missing_config_and_malformed_override(cli, tmp_path: Path) -> None:
    missing = cli("validate", tmp_path / "none.yaml")
    assert missing.exit_code == 2 and missing.stderr.startswith("error: config file not found")
    malformed = cli("validate", tmp_path / "none.yaml", "--set", "epochs")
    assert malformed.exit_code == 2


def test_light_commands_never_import_heavy_libraries(tiny_config, tmp_path: Path) -> None:
    config = tiny_config()
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "part0.npy", np.zeros((10, 4, 4), np.uint8))
    sharded = tiny_config({"data": {"source": str(shards)}}, name="sharded.yaml")
    (tmp_path / "s.csv").write_text("t,v\n" + "".join(f"2024-01-01 00:{m:02d}:00,{m}\n" for m in range(60)))
    series = {"source": str(tmp_path / "s.csv"), "series": {"time_column": "t"}, "window": {"size": 8}}
    series_config = tiny_config({"data": series, "model": {"kind": "conv1d", "filters": [4]}}, name="series.yaml")
    (tmp_path / "t.txt").write_text("a text\nanother text\n")
    texts = {"source": str(tmp_path / "t.txt"), "text": {"max_tokens": 50}}
    text_config = tiny_config({"data": texts, "model": {"kind": "sequence"}}, name="text.yaml")
    script = textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        from aecli.cli import app
        runner = CliRunner()
        for args in (["--help"], ["validate", {str(config)!r}], ["schema"], ["train", "--bogus"],
                     ["validate", "/nonexistent.yaml"], ["validate", {str(sharded)!r}], ["prepare", "--help"],
                     ["validate", {str(series_config)!r}], ["embed", "--help"], ["score", "--help"],
                     ["threshold", "--help"], ["validate", {str(text_config)!r}]):
            result = runner.invoke(app, args)
            assert result.exit_code in (0, 2), result.output
            assert "validate" not in args or "nonexistent" in args[-1] or result.exit_code == 0, result.output
        heavy = [m for m in ("tensorflow", "keras", "sklearn", "matplotlib") if m in sys.modules]
        print(",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "aecli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("aecli ")


def test_shipped_schema_matches_the_config_model() -> None:
    from aecli.config import config_json_schema

    shipped = json.loads((Path(__file__).parents[1] / "configs" / "aecli.schema.json").read_text())
    assert shipped == config_json_schema(), "regenerate it: aecli schema > configs/aecli.schema.json"


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name: str) -> None:
    from aecli.config import load_config

    load_config(Path(__file__).parents[1] / "configs" / name)


def test_training_survives_a_closed_stdout(tiny_config, tmp_path: Path) -> None:
    """`aecli train ... | head -1` must not turn the run into a failure."""
    config = tiny_config({"training": {"epochs": 3}})
    command = f"{sys.executable} -m aecli train {config} --runs-dir {tmp_path / 'runs'} --quiet | head -1"
    subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=300)
    (run,) = list((tmp_path / "runs").iterdir())
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_train_argument_mistakes_are_one_line(cli, tiny_config, tmp_path: Path) -> None:
    for args in (["train"], ["train", str(tiny_config()), "--resume", str(tmp_path)]):
        result = cli(*args)
        assert result.exit_code == 2 and result.stderr.startswith("error: give a CONFIG")
        assert len(result.stderr.strip().splitlines()) == 1
