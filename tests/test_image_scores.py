"""Images' structural score (anomaly.score dssim): SSIM as TensorFlow computes it, the same
number in training, evaluate, score and the exported graph, and refused where it cannot apply."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from aecli.evaluation import per_sample_errors, structural_similarity
from aecli.export import _dssim
from tests.conftest import write_config


@pytest.mark.parametrize("shape", [(6, 28, 28, 1), (4, 9, 7, 3), (3, 8, 8, 1)])
def test_structural_similarity_is_tensorflows_ssim(shape: tuple[int, ...]) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    x_hat = np.clip(x + rng.normal(0, 0.2, shape), 0, 1).astype(np.float32)
    window = min(11, shape[1], shape[2])
    expected = tf.image.ssim(x, x_hat, max_val=1.0, filter_size=window, filter_sigma=1.5 * window / 11).numpy()
    np.testing.assert_allclose(structural_similarity(x, x_hat), expected, atol=1e-5)
    # the graph's version (export) computes the same per image
    np.testing.assert_allclose(np.asarray(_dssim(x, x_hat)), (1 - expected) / 2, atol=1e-5)


def test_dssim_is_zero_for_a_copy_grows_with_damage_and_is_only_for_images() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((3, 12, 12, 1)).astype(np.float32)
    damaged = x.copy()
    damaged[1, 2:6, 2:6] = 0
    damaged[2, 2:10, 2:10] = 0
    dssim = per_sample_errors(x, damaged, dssim=True)["dssim"]
    assert dssim[0] == pytest.approx(0.0, abs=1e-9)
    assert 0 < dssim[1] < dssim[2] <= 1
    assert "dssim" not in per_sample_errors(x, damaged)  # asked for only
    assert "dssim" not in per_sample_errors(x.reshape(3, -1), damaged.reshape(3, -1), dssim=True)  # not images


def _read_column(path: Path, name: str) -> np.ndarray:
    with path.open() as handle:
        return np.array([float(row[name]) for row in csv.DictReader(handle)])


def test_a_dssim_run_scores_by_it_everywhere(cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"anomaly": {"score": "dssim"}})
    trained = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert trained.exit_code == 0, trained.output
    run_dir = Path(trained.stdout.strip().splitlines()[-1])
    assert "dssim" in (run_dir / "thresholds.json").read_text()
    stored = _read_column(run_dir / "errors.csv", "dssim")
    assert ((stored >= 0) & (stored <= 1)).all() and stored.std() > 0

    evaluated = cli("evaluate", run_dir, "--normal-classes", "0,1,2,3,4", "--out", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    np.testing.assert_allclose(_read_column(tmp_path / "eval" / "errors.csv", "dssim"), stored, rtol=1e-6)
    assert '"score": "dssim"' in (tmp_path / "eval" / "metrics.json").read_text()
    assert "](class_extremes.png)" in (tmp_path / "eval" / "report.md").read_text()  # labelled images: drawn
    assert (tmp_path / "eval" / "class_extremes.png").stat().st_size > 0

    rows = load_digits().data[:50].astype(np.float32).reshape(-1, 8, 8, 1)
    np.save(tmp_path / "rows.npy", rows)
    scored = cli("score", run_dir, tmp_path / "rows.npy", "--out", tmp_path / "scores.csv")
    assert scored.exit_code == 0, scored.output
    scores = _read_column(tmp_path / "scores.csv", "dssim")
    with_mse = cli(
        "score", run_dir, tmp_path / "rows.npy", "--score", "mse", "--threshold", "1", "--out", tmp_path / "m.csv"
    )
    assert with_mse.exit_code == 0, with_mse.output
    assert ((scores >= 0) & (scores <= 1)).all() and not np.allclose(scores, _read_column(tmp_path / "m.csv", "mse"))


def test_dssim_is_refused_for_tables_and_texts_in_one_line(cli, tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    values = np.random.default_rng(0).random((60, 4))
    table.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.4f}" for v in row) for row in values) + "\n")
    config = write_config(tmp_path, {"data": {"source": str(table)}, "anomaly": {"score": "dssim"}})
    refused = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert refused.exit_code == 2 and "anomaly.score: dssim compares images" in refused.output
    assert "dssim compares images" in refused.output.strip().splitlines()[-1]  # (after the "training ..." line)
    assert not list((tmp_path / "runs").glob("*/model.keras"))

    text = write_config(
        tmp_path, {"data": {"source": "texts.csv", "text": {}}, "anomaly": {"score": "dssim"}}, "t.yaml"
    )
    invalid = cli("validate", text)
    assert invalid.exit_code == 2 and "dssim is for arrays, images" in invalid.output
