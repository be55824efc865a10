"""Thresholds as first-class objects: fpr and best_f1 by hand, `aecli threshold` recalibrating a
run from its stored errors (thresholds.json), and evaluate using the calibrated threshold."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from aecli.config import load_config
from aecli.errors import ConfigError, EvaluationError
from aecli.evaluation import anomaly_report
from aecli.reporting import read_error_column
from aecli.thresholds import auto_threshold, best_f1_threshold, fpr_threshold, parse_threshold, resolve_threshold


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0.2, 8.0), (0.25, 8.0), (0.1, 9.0), (0.0, 10.0), (0.99, 1.0)],
)
def test_fpr_threshold_is_the_lowest_that_flags_at_most_that_share(rate: float, expected: float) -> None:
    normal = np.arange(1.0, 11.0)  # 1 .. 10
    threshold = fpr_threshold(normal, rate)
    assert threshold == expected
    assert np.mean(normal > threshold) <= rate
    assert threshold == normal.min() or np.mean(normal > np.nextafter(threshold, 0)) > rate  # the lowest such


def test_fpr_threshold_with_ties_flags_none_of_the_tied_scores() -> None:
    normal = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    assert fpr_threshold(normal, 0.5) == 2.0  # flags only 3.0: 1.0 or below would flag four of five


def test_best_f1_by_hand() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    is_anomaly = np.array([False, False, True, True])
    # Flag the top 1: F1 2/3; top 2: 1/2; top 3: 4/5; all: 2/3. The best flags 0.8, 0.4 and 0.35.
    threshold = best_f1_threshold(scores, is_anomaly)
    assert threshold == 0.1
    assert anomaly_report(scores, is_anomaly, threshold)["f1"] == pytest.approx(0.8)


def test_best_f1_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        is_anomaly = rng.random(60) < 0.3
        scores = np.round(rng.random(60) + is_anomaly * rng.random(60), 2)  # ties included
        if not is_anomaly.any():
            continue
        candidates = np.r_[np.unique(scores), scores.min() - 1]
        brute = max(f1_score(is_anomaly, scores > t, zero_division=0) for t in candidates)
        chosen = best_f1_threshold(scores, is_anomaly)
        assert f1_score(is_anomaly, scores > chosen) == pytest.approx(brute)


def test_new_threshold_forms_parse_and_print_back() -> None:
    for spec in ("fpr:0.01", "best_f1", "max", "0.25", "percentile:99.5"):
        assert str(parse_threshold(spec)) == spec
    assert str(parse_threshold("value:0.5")) == "0.5"
    for bad in ("fpr:1", "fpr:-0.1", "best_f1:2"):
        with pytest.raises(EvaluationError, match="--threshold"):
            parse_threshold(bad)
    with pytest.raises(EvaluationError, match="held-out normal data"):
        resolve_threshold(parse_threshold("fpr:0.1"), np.ones(3), np.ones(3))
    with pytest.raises(EvaluationError, match="both normal samples and anomalies"):
        resolve_threshold(parse_threshold("best_f1"), np.ones(3), np.ones(3), is_anomaly=np.zeros(3, bool))


def test_the_config_refuses_thresholds_training_cannot_compute() -> None:
    with pytest.raises(ConfigError, match="best_f1 needs labelled anomalies"):
        load_config(None, ["anomaly.threshold=best_f1"])
    with pytest.raises(ConfigError, match="fpr is measured on the validation rows"):
        load_config(None, ["anomaly.threshold=fpr:0.01", "data.validation_split=0"])
    assert load_config(None, ["anomaly.threshold=fpr:0.01"]).anomaly.threshold == "fpr:0.01"


def test_a_computed_threshold_below_every_error_is_refused_like_a_negative_value() -> None:
    errors = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(EvaluationError, match="mean_std:-100: gives .* would flag every row"):
        resolve_threshold(parse_threshold("mean_std:-100"), errors, errors)
    assert resolve_threshold(parse_threshold("mean_std:-1"), errors, errors) == pytest.approx(
        errors.mean() - errors.std()
    )
    with pytest.raises(EvaluationError, match="finite and >= 0"):
        parse_threshold("value:-1")


def test_auto_is_calibrated_on_held_out_rows_when_there_are_some() -> None:
    assert str(auto_threshold("auto", has_held_out_rows=True)) == "fpr:0.05"
    assert str(auto_threshold("auto", has_held_out_rows=False)) == "percentile:95"
    assert str(auto_threshold("mean_std:2", has_held_out_rows=True)) == "mean_std:2"
    assert load_config(None, []).anomaly.threshold == "auto"
    assert load_config(None, ["data.validation_split=0"]).anomaly.threshold == "auto"  # falls back, no refusal


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """The session's trained run, copied: these tests recalibrate it."""
    return Path(shutil.copytree(trained_run, tmp_path / trained_run.name))


def digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.glob("*.keras"))}


def test_training_records_validation_errors_and_its_threshold(run_copy: Path) -> None:
    record = json.loads((run_copy / "thresholds.json").read_text())
    train = read_error_column(run_copy / "train_errors.csv", "mse")
    validation = read_error_column(run_copy / "val_errors.csv", "mse")
    assert len(validation) == json.loads((run_copy / "run.json").read_text())["data"]["validation"]
    # the default (auto) is calibrated on the held-out validation rows, not the training rows' 95th percentile
    assert record["active"]["method"] == "fpr:0.05" and record["previous"] == []
    assert record["active"]["value"] == pytest.approx(fpr_threshold(validation, 0.05), rel=1e-5)  # csv: 6 digits
    assert record["active"]["computed_from"].startswith("validation split")
    rate = record["active"]["expected_false_positive_rate"]
    # (the CSV keeps 8 digits: the row at the threshold itself may read as just above it)
    assert abs(rate - np.mean(validation > record["active"]["value"])) <= 1 / len(validation) and rate <= 0.05
    assert len(train) > len(validation)


def test_threshold_recalibrates_from_stored_errors_without_touching_the_model(cli, run_copy: Path) -> None:
    before = digests(run_copy)
    result = cli("threshold", run_copy, "--method", "fpr:0.1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(run_copy / "thresholds.json")
    record = json.loads((run_copy / "thresholds.json").read_text())
    validation = read_error_column(run_copy / "val_errors.csv", "mse")
    active = record["active"]
    assert active["method"] == "fpr:0.1" and active["value"] == fpr_threshold(validation, 0.1)
    assert active["expected_false_positive_rate"] == np.mean(validation > active["value"])
    assert "(chosen on them)" in active["false_positive_rate_on"]  # in-sample, and it says so
    assert active["command"].split()[0] == "aecli"  # (sys.argv is pytest's under the test runner)
    assert [entry["method"] for entry in record["previous"]] == ["fpr:0.05"]  # kept, not overwritten
    assert digests(run_copy) == before

    refused = cli("threshold", run_copy, "--method", "mean_std:-100")
    assert refused.exit_code == 2 and "would flag every row" in refused.output
    assert json.loads((run_copy / "thresholds.json").read_text()) == record  # nothing recorded

    # evaluate flags with the calibrated threshold unless told otherwise
    evaluated = cli("evaluate", run_copy, "--normal-classes", "0,1,2,3,4")
    assert evaluated.exit_code == 0, evaluated.output
    out_dir = Path(evaluated.stdout.strip().splitlines()[-1])
    anomaly = json.loads((out_dir / "metrics.json").read_text())["anomaly"]
    assert (out_dir / "residuals.png").stat().st_size > 0  # residual heatmaps of the worst images
    assert anomaly["threshold"] == pytest.approx(active["value"])
    assert anomaly["threshold_spec"] == "fpr:0.1" and "calibrated" in anomaly["threshold_from"]


def test_best_f1_on_the_test_labels_and_the_errors_it_needs(cli, run_copy: Path) -> None:
    result = cli("threshold", run_copy, "--method", "best_f1", "--normal-classes", "0,1,2,3,4")
    assert result.exit_code == 0, result.output
    active = json.loads((run_copy / "thresholds.json").read_text())["active"]
    test = read_error_column(run_copy / "errors.csv", "mse")
    with (run_copy / "errors.csv").open() as handle:
        labels = [row["label"] for row in csv.DictReader(handle)]
    is_anomaly = np.array([label not in {"0", "1", "2", "3", "4"} for label in labels])
    assert active["value"] == best_f1_threshold(test, is_anomaly)
    assert "test split" in active["computed_from"]

    no_labels = cli("threshold", run_copy, "--method", "best_f1")
    assert no_labels.exit_code == 2 and "--normal-classes" in no_labels.stderr
    assert len(no_labels.stderr.strip().splitlines()) == 1
    unknown = cli("threshold", run_copy, "--method", "best_f1", "--normal-classes", "7,cat")
    assert unknown.exit_code == 2 and "no such label" in unknown.stderr
    (run_copy / "val_errors.csv").unlink()  # a run without validation errors
    no_normal = cli("threshold", run_copy, "--method", "fpr:0.05")
    assert no_normal.exit_code == 2 and "--normal-data" in no_normal.stderr
    assert json.loads((run_copy / "thresholds.json").read_text())["active"]["method"] == "best_f1"  # unchanged


def test_fpr_on_other_normal_data_scores_it_with_the_model(cli, run_copy: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    np.save(tmp_path / "normal.npy", load_digits().images[:200])
    result = cli("threshold", run_copy, "--method", "fpr:0.05", "--normal-data", tmp_path / "normal.npy")
    assert result.exit_code == 0, result.output
    active = json.loads((run_copy / "thresholds.json").read_text())["active"]
    assert "--normal-data" in active["false_positive_rate_on"] and "200 rows" in active["false_positive_rate_on"]
    assert 0 < active["expected_false_positive_rate"] <= 0.05  # at most 10 of the 200 rows, and some


def test_threshold_from_stored_errors_never_imports_tensorflow(run_copy: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        from aecli.cli import app
        result = CliRunner().invoke(app, ["threshold", {str(run_copy)!r}, "--method", "mean_std:3"])
        assert result.exit_code == 0, result.output
        print(",".join(m for m in ("tensorflow", "keras") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""  # the names of any heavy library it imported
