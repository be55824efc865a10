"""Anomaly detection on tables: robust scaling, model widths and epochs from the data, code-space
scores (knn, combined) through train, evaluate, score and threshold, export's refusal, and the
IsolationForest and PCA baselines evaluate reports beside the autoencoder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from aecli.code_scores import CodeSpace
from aecli.config import load_config
from aecli.data.scaling import IQR_PER_STD, fit_scaling
from aecli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "tabular_anomaly.yaml"


def write_table(path: Path, rows: int, seed: int, outliers: int = 0) -> Path:
    """Six correlated columns (two latent factors) and a label; `outliers` rows are off that plane."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(rows, 2))
    mixing = np.random.default_rng(99).normal(size=(2, 6))  # the same plane in every file
    x = factors @ mixing + 0.05 * rng.normal(size=(rows, 6))
    labels = np.zeros(rows, int)
    if outliers:
        x[:outliers] += rng.normal(0.0, 2.0, size=(outliers, 6))
        labels[:outliers] = 1
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(6)] + ["label"])
        writer.writerows([[f"{v:.6f}" for v in row] + [label] for row, label in zip(x, labels, strict=True)])
    return path


def test_robust_scaling_is_not_moved_by_outliers() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(4000, 3))
    x[:, 2] = 7.0  # constant: keeps a scale of 1
    contaminated = x.copy()
    contaminated[:200, 0] = 1e6  # 5% of wild values
    clean, robust = fit_scaling(x, "robust", False), fit_scaling(contaminated, "robust", False)
    assert robust.kind == "robust" and robust.scale[2] == 1.0 and robust.offset[2] == 7.0
    assert robust.offset[0] == pytest.approx(clean.offset[0], abs=0.2)  # a mean would move by 5e4
    assert robust.scale[0] == pytest.approx(2.0, rel=0.1)  # the IQR / 1.349 of N(5, 2)
    q1, q3 = np.percentile(x[:, 1], [25, 75])
    assert clean.scale[1] == pytest.approx((q3 - q1) / IQR_PER_STD)
    assert fit_scaling(contaminated, "zscore", False).scale[0] > 1e4


def test_widths_from_features_and_steps_resolve_from_the_data() -> None:
    config = load_config(RECIPE, ["data.source=digits"])
    small = config.sized_for((6,), training_rows=500).model
    assert (small.encoder, small.latent_dim, small.decoder, small.widths) == ([8], 3, [8], "as_given")
    wide = config.sized_for((274,), training_rows=500)
    assert (wide.model.encoder, wide.model.latent_dim) == ([128], 32)
    assert config.sized_for((64,)).model.encoder == [64] and config.sized_for((64,)).model.latent_dim == 16
    # 1000 steps of batch 64: 500 rows are 8 batches an epoch, so 125 epochs; 64,000 rows need 1 epoch
    assert (wide.training.epochs, wide.training.steps) == (125, None)
    assert config.sized_for((6,), training_rows=64_000).training.epochs == 1
    with pytest.raises(ConfigError, match="latent_dim: model.widths from_features sizes the model"):
        load_config(RECIPE, ["data.source=digits", "model.latent_dim=4"])
    with pytest.raises(ConfigError, match="steps: training.steps sets the epochs"):
        load_config(RECIPE, ["data.source=digits", "training.epochs=5"])
    with pytest.raises(ConfigError, match="widths: applies to model.kind dense only"):
        load_config(None, ["model.kind=conv", "model.widths=from_features"])
    with pytest.raises(ConfigError, match="neighbours: applies to anomaly.score knn and combined"):
        load_config(None, ["anomaly.neighbours=5"])


def test_code_space_neighbours_exclude_the_row_itself() -> None:
    rng = np.random.default_rng(1)
    codes = rng.normal(size=(300, 4)).astype(np.float32)
    mse = rng.random(300)
    space, own = CodeSpace.fit(codes, mse, neighbours=5, seed=0)
    from sklearn.neighbors import NearestNeighbors

    # by brute force: each training row's 5 nearest other rows
    distances = np.linalg.norm(codes[:, None] - codes[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    expected = np.sort(distances, axis=1)[:, :5].mean(axis=1)
    np.testing.assert_allclose(own["knn"], expected, rtol=1e-5)
    assert space.centers["knn"] == pytest.approx(np.median(expected), rel=1e-5)
    q1, q3 = np.percentile(expected, [25, 75])
    assert space.spreads["knn"] == pytest.approx((q3 - q1) / IQR_PER_STD, rel=1e-4)
    # a new row: its own neighbours among the training codes, no exclusion
    new = rng.normal(size=(7, 4)).astype(np.float32)
    scores = space.scores(new, np.zeros(7))
    index = NearestNeighbors(n_neighbors=5).fit(codes)
    np.testing.assert_allclose(scores["knn"], index.kneighbors(new)[0].mean(axis=1), rtol=1e-5)
    combined = (
        (0 - space.centers["mse"]) / space.spreads["mse"]
        + (scores["knn"] - space.centers["knn"]) / space.spreads["knn"]
    ) / 2
    np.testing.assert_allclose(scores["combined"], combined, rtol=1e-9)
    far = space.scores(np.full((1, 4), 50.0, np.float32), np.zeros(1))
    assert far["knn"][0] > own["knn"].max() and far["combined"][0] > own["combined"].max()


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The table recipe trained once on a small table holding a few anomalies: (run, train, test)."""
    from typer.testing import CliRunner

    from aecli.cli import app

    folder = tmp_path_factory.mktemp("table")
    train = write_table(folder / "train.csv", 400, seed=0, outliers=12)
    test = write_table(folder / "test.csv", 300, seed=1, outliers=20)
    settings = [f"data.source={train}", "data.label_column=label", "training.steps=200"]
    command = ["train", str(RECIPE), "--runs-dir", str(folder / "runs"), "--quiet"]
    result = CliRunner().invoke(app, command + [part for setting in settings for part in ("--set", setting)])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1]), train, test


@pytest.mark.slow
def test_the_table_recipe_end_to_end(cli, table_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    run, train, test = table_run
    run = Path(shutil.copytree(run, tmp_path / run.name))  # (this test recalibrates it)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["encoder"] == [8] and saved["model"]["latent_dim"] == 3
    assert "steps" not in saved["training"] or saved["training"]["steps"] is None
    rows = json.loads((run / "run.json").read_text())["data"]["train"]
    assert saved["training"]["epochs"] == round(200 / -(-rows // 64))  # 200 steps of batch 64
    header = (run / "train_errors.csv").read_text().splitlines()[0].split(",")
    assert {"mse", "knn", "combined"} <= set(header)
    threshold = json.loads((run / "thresholds.json").read_text())["active"]
    assert threshold["score"] == "combined" and threshold["method"] == "fpr:0.05"

    evaluated = cli("evaluate", run, "--data", test, "--set", "data.label_column=label", "--normal-classes", "0")
    assert evaluated.exit_code == 0, evaluated.output
    out = Path(evaluated.stdout.strip().splitlines()[-1])
    anomaly = json.loads((out / "metrics.json").read_text())["anomaly"]
    assert anomaly["score"] == "combined" and anomaly["auroc"] > 0.9, (anomaly["auroc"], anomaly["baselines"])
    assert set(anomaly["baselines"]) == {"isolation_forest", "pca_3"}
    assert all(0.0 <= row["auroc"] <= 1.0 for row in anomaly["baselines"].values())
    assert "baseline isolation_forest" in evaluated.output
    with (out / "errors.csv").open() as handle:
        evaluated_scores = [float(row["combined"]) for row in csv.DictReader(handle)]

    # aecli score gives every row the score evaluate gave it (the same code path for the codes)
    scored = cli("score", run, test, "--out", tmp_path / "scores.csv")
    assert scored.exit_code == 0, scored.output
    with (tmp_path / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(row["combined"]) for row in rows], evaluated_scores, rtol=1e-5, atol=1e-6)

    plain = cli("evaluate", run, "--data", test, "--set", "data.label_column=label", "--normal-classes", "0",
                "--no-baselines", "--score", "knn")  # fmt: skip
    assert plain.exit_code == 0, plain.output
    metrics = json.loads((Path(plain.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())["anomaly"]
    assert "baselines" not in metrics and metrics["score"] == "knn"

    recalibrated = cli("threshold", run, "--method", "fpr:0.1", "--normal-data", train,
                       "--set", "data.label_column=label")  # fmt: skip
    assert recalibrated.exit_code == 0, recalibrated.output

    refused = cli("export", run, "--format", "onnx")
    assert refused.exit_code == 2 and "score combined: an exported graph" in refused.output
    assert not (run / "export-onnx").exists()


def test_code_scores_need_a_run_that_kept_its_codes(cli, trained_run: Path, tmp_path: Path) -> None:
    result = cli("evaluate", trained_run, "--score", "knn", "--out", tmp_path / "eval")
    assert result.exit_code == 2 and "--score knn: needs the training codes" in result.output
    assert not (tmp_path / "eval").exists()


def test_a_one_row_table_of_huge_values_still_draws_its_histogram(cli, trained_run: Path, tmp_path: Path) -> None:
    row = np.zeros((1, 64))
    row[0, 0] = 1e20
    np.save(tmp_path / "one.npy", row)
    result = cli("evaluate", trained_run, "--data", tmp_path / "one.npy", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "error_histogram.png").is_file()


def test_a_value_beyond_float32_is_named_by_file_and_row(cli, trained_run: Path, tmp_path: Path) -> None:
    table = tmp_path / "big.csv"
    lines = [",".join(f"p{i}" for i in range(64))] + [",".join(["0"] * 64)] * 3 + [",".join(["1e39"] + ["0"] * 63)]
    table.write_text("\n".join(lines) + "\n")
    result = cli("score", trained_run, table)
    assert result.exit_code == 2
    assert f"{table}: row 4 has values beyond float32's range" in result.output


def _reordered(source: Path, target: Path, order: list[int], rename: dict[str, str] | None = None) -> Path:
    rows = list(csv.reader(source.open()))
    rows[0] = [(rename or {}).get(name, name) for name in rows[0]]
    with target.open("w", newline="") as handle:
        csv.writer(handle).writerows([[row[i] for i in order] for row in rows])
    return target


@pytest.mark.slow
def test_columns_are_matched_by_name_everywhere(cli, table_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from aecli.serving import parse_rows
    from aecli.trained_run import open_trained_run

    run, _, test = table_run
    assert json.loads((run / "run.json").read_text())["data"]["feature_names"] == [f"f{i}" for i in range(6)]
    reordered = _reordered(test, tmp_path / "reordered.csv", [6, 5, 4, 3, 2, 1, 0])  # label first, f5 ... f0
    scored = {}
    for name, source in (("as trained", test), ("reordered", reordered)):
        result = cli("score", run, source, "--out", tmp_path / f"scored {name}.csv", "--top-k", "1")
        assert result.exit_code == 0, result.output
        scored[name] = (tmp_path / f"scored {name}.csv").read_text()
    assert scored["reordered"] == scored["as trained"]  # the same scores, and blame on the same columns

    renamed = _reordered(test, tmp_path / "renamed.csv", list(range(7)), {"f2": "f2_new"})
    for command in (("score", run, renamed), ("evaluate", run, "--data", renamed, "--set", "data.label_column=label")):
        result = cli(*command)
        assert result.exit_code == 2, result.output
        assert "missing f2; not in the run: f2_new" in result.output

    # evaluate --data reads a reordered table by name too
    metrics = []
    for source in (test, reordered):
        result = cli("evaluate", run, "--data", source, "--set", "data.label_column=label", "--no-baselines",
                     "--out", tmp_path / f"eval-{source.stem}")  # fmt: skip
        assert result.exit_code == 0, result.output
        metrics.append(json.loads((tmp_path / f"eval-{source.stem}" / "metrics.json").read_text())["reconstruction"])
    assert metrics[0] == metrics[1]

    # the service: JSON objects with their keys in any order, and CSV bodies likewise
    trained = open_trained_run(run)
    row = {f"f{i}": 0.1 * i for i in range(6)}
    ordered = parse_rows(json.dumps([row]).encode(), "application/json", trained)
    shuffled = parse_rows(json.dumps([dict(reversed(row.items()))]).encode(), "application/json", trained)
    np.testing.assert_array_equal(ordered.x, shuffled.x)
    assert shuffled.names == [f"f{i}" for i in range(6)]
    body = "f5,f4,f3,f2,f1,f0\n" + ",".join(str(0.1 * i) for i in range(5, -1, -1)) + "\n"
    np.testing.assert_array_equal(parse_rows(body.encode(), "text/csv", trained).x, ordered.x)
