"""Metrics against small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from aecli.errors import EvaluationError
from aecli.evaluation import (
    PSNR_CAP_DB,
    anomaly_report,
    latent_report,
    mean_ssim,
    per_sample_errors,
    project_2d,
    reconstruction_report,
)
from aecli.thresholds import parse_threshold, resolve_threshold


def test_perfect_reconstruction_gives_zero_error_and_capped_psnr() -> None:
    x = np.random.default_rng(0).random((5, 4, 4, 1)).astype(np.float32)
    report, _errors = reconstruction_report(x, x.copy(), np.array([0, 0, 1, 1, 1]))
    assert report["reconstruction"]["mse"] == 0 and report["reconstruction"]["mae"] == 0
    assert report["reconstruction"]["psnr"] == PSNR_CAP_DB
    assert report["per_class"] == {"0": {"mse": 0.0, "n": 2}, "1": {"mse": 0.0, "n": 3}}
    assert mean_ssim(x, x) == pytest.approx(1.0, abs=1e-5)


def test_hand_computed_errors() -> None:
    x = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    x_hat = np.array([[0.5, 1.0], [0.5, 0.0]], np.float32)
    errors = per_sample_errors(x, x_hat)
    np.testing.assert_allclose(errors["mse"], [0.125, 0.125])
    np.testing.assert_allclose(errors["mae"], [0.25, 0.25])
    report, _ = reconstruction_report(x, x_hat, None)
    assert report["reconstruction"]["psnr"] == pytest.approx(10 * np.log10(1 / 0.125))
    assert report["error_quantiles"]["max"] == pytest.approx(0.125)
    # bce of target 0 predicted 0.5 is ln 2; target 1 predicted 1 is ~0
    assert errors["bce"][0] == pytest.approx(np.log(2) / 2, rel=1e-4)


def test_bce_is_left_out_for_data_outside_unit_range() -> None:
    x = np.array([[2.0, -1.0]], np.float32)
    assert "bce" not in per_sample_errors(x, x)


def test_perfectly_separated_scores_give_auroc_one() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    is_anomaly = np.array([False, False, False, True, True])
    report = anomaly_report(scores, is_anomaly, threshold=0.5)
    assert report["auroc"] == 1.0 and report["auprc"] == 1.0
    assert (report["precision"], report["recall"], report["f1"], report["n_flagged"]) == (1.0, 1.0, 1.0, 2)
    assert report["positive_class"] == "anomaly"


def test_threshold_confusion_by_hand() -> None:
    scores = np.array([0.1, 0.6, 0.3, 0.9])
    is_anomaly = np.array([False, False, True, True])
    report = anomaly_report(scores, is_anomaly, threshold=0.5)  # flags 0.6 (normal) and 0.9 (anomaly)
    assert (report["precision"], report["recall"]) == (0.5, 0.5)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("max", 4.0),
        ("percentile:50", 2.5),
        ("mean_std:1", 2.5 + np.std([1, 2, 3, 4])),
        ("0.7", 0.7),
        ("contamination:0.25", 7.25),
    ],
)
def test_threshold_specs(spec: str, expected: float) -> None:
    train = np.array([1.0, 2.0, 3.0, 4.0])
    evaluated = np.array([5.0, 6.0, 7.0, 8.0])
    assert resolve_threshold(parse_threshold(spec), train, evaluated) == pytest.approx(expected)


@pytest.mark.parametrize(
    "spec", ["median", "percentile:0", "percentile:120", "contamination:1", "quantile:3", "-0.5", "nan"]
)
def test_bad_threshold_specs(spec: str) -> None:
    with pytest.raises(EvaluationError, match="--threshold"):
        parse_threshold(spec)


def test_latent_metrics_on_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    codes = rng.normal(0, 0.1, (90, 4)) + labels[:, None] * 5
    report = latent_report(codes, labels)
    assert report is not None
    assert report["kmeans_nmi"] == pytest.approx(1.0) and report["kmeans_ari"] == pytest.approx(1.0)
    assert report["silhouette"] > 0.9 and report["knn_accuracy"] == 1.0


def test_latent_metrics_need_two_classes() -> None:
    assert latent_report(np.zeros((10, 2)), np.zeros(10, int)) is None


def test_two_dimensional_codes_are_plotted_as_they_are() -> None:
    codes = np.arange(20.0).reshape(10, 2)
    points, method = project_2d(codes, "pca")
    assert method == "latent codes" and np.array_equal(points, codes)
    assert project_2d(np.random.default_rng(0).random((30, 5)), "pca")[1] == "PCA"


def test_worst_residuals_are_the_highest_scores_and_their_squared_errors() -> None:
    from aecli.reporting import worst_residuals

    x = np.zeros((4, 2, 2, 1))
    x_hat = x.copy()
    x_hat[2, 0, 1, 0] = 0.5  # one pixel off by 0.5
    x_hat[0, 1, 1, 0] = 0.1
    scores = np.array([0.3, 0.0, 0.9, np.nan])  # a NaN score counts as the worst
    worst, residual = worst_residuals(x, x_hat, scores, count=3)
    assert worst.tolist() == [3, 2, 0]
    assert residual.shape == (3, 2, 2, 1)
    assert residual[1, 0, 1, 0] == 0.25 and residual[1].sum() == 0.25
    assert residual[2, 1, 1, 0] == pytest.approx(0.01)
