"""`aecli threshold`: choose a trained run's anomaly threshold again, from the per-sample errors
it stores (see calibration.py), without retraining or touching its model files.

Only --normal-data and --anomaly-data need the model (their rows are scored first); every
other method reads CSV files and takes a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.backend import select_backend
from aecli.calibration import (
    VALIDATION_ERRORS,
    Errors,
    Threshold,
    calibrate,
    chosen_score,
    labelled_test_errors,
    missing_score,
    record_threshold,
    stored_errors,
    training_errors,
)
from aecli.code_scores import code_space_of
from aecli.errors import EvaluationError, RunError
from aecli.evaluation import per_sample_errors, predict_fixed
from aecli.thresholds import parse_threshold
from aecli.trained_run import TrainedRun, load_model, open_trained_run, refuse_text_run


@dataclass
class ThresholdRequest:
    run_dir: Path
    method: str
    score: str | None = None  # default: the score the run's threshold uses
    normal_data: str | None = None  # held-out normal rows for fpr (default: the validation split)
    normal_classes: list[str] | None = None  # best_f1 on the test split's labels
    anomaly_data: str | None = None  # best_f1: these rows are anomalies, the test split normal
    data_overrides: list[str] = field(default_factory=list)
    command: str | None = None


@dataclass
class ThresholdOutcome:
    threshold: Threshold
    flagged: dict[str, tuple[int, int]]  # per set of stored errors: (flagged, rows)
    previous: dict[str, Any] | None


def set_threshold(request: ThresholdRequest) -> ThresholdOutcome:
    """Compute the threshold, make it the run's active one (thresholds.json), and say what it flags."""
    run = open_trained_run(request.run_dir, needs=("train_errors.csv",))
    if request.normal_data or request.normal_classes or request.anomaly_data:
        refuse_text_run(run, "threshold with --normal-data, --normal-classes or --anomaly-data")
    score = chosen_score(request.score, run.metrics)
    spec = parse_threshold(request.method, "--method")
    if request.normal_classes is not None and request.anomaly_data is not None:
        raise EvaluationError("--normal-classes and --anomaly-data are two ways to label anomalies: use one")
    train = training_errors(run.path, score)
    normal = _normal_errors(run, request, score)
    labelled = _labelled_errors(run, request, score) if spec.needs == "labelled" else None
    threshold = calibrate(spec, score, train, normal, labelled, request.command)
    record = record_threshold(run.path, threshold)
    previous = record["previous"][-1] if record["previous"] else None
    flagged = {
        errors.source: (int(np.sum(errors.scores > threshold.value)), len(errors.scores))
        for errors in (train, normal, labelled)
        if errors is not None
    }
    return ThresholdOutcome(threshold, flagged, previous)


def _normal_errors(run: TrainedRun, request: ThresholdRequest, score: str) -> Errors | None:
    if request.normal_data is not None:
        scores = _scored(run, request.normal_data, request.data_overrides, "--normal-data", score)
        return Errors(scores, f"--normal-data {request.normal_data}")
    return stored_errors(run.path, VALIDATION_ERRORS, score, "validation split")


def _labelled_errors(run: TrainedRun, request: ThresholdRequest, score: str) -> Errors:
    if request.normal_classes is not None:
        return labelled_test_errors(run.path, score, request.normal_classes)
    if request.anomaly_data is None:
        raise EvaluationError(
            f"--method {request.method}: needs labels: --normal-classes (labels of the test split that are normal) "
            "or --anomaly-data FILE (rows that are all anomalies; the test split is normal)"
        )
    test = stored_errors(run.path, "errors.csv", score, "test split")
    if test is None:
        raise RunError(f"run {run.path} has no errors.csv")
    anomalies = _scored(run, request.anomaly_data, request.data_overrides, "--anomaly-data", score)
    is_anomaly = np.r_[np.zeros(len(test.scores), bool), np.ones(len(anomalies), bool)]
    source = f"test split (errors.csv) as normal + --anomaly-data {request.anomaly_data}"
    return Errors(np.r_[test.scores, anomalies], source, is_anomaly)


def _scored(run: TrainedRun, source: str, overrides: list[str], option: str, score: str) -> np.ndarray:
    """Per-sample `score` of every row of `source` under the run's model (the only step that loads it)."""

    select_backend(run.config.runtime.backend)
    samples = run.read_samples(source, overrides, option)
    errors = per_sample_errors(
        samples.x, predict_fixed(load_model(run.path / "model.keras", compile=False), samples.x), dssim=True
    )
    space = code_space_of(run.path, score)
    if space is not None:
        codes = predict_fixed(load_model(run.path / "encoder.keras", compile=False), samples.x)
        errors.update(space.scores(codes, errors["mse"]))
    if score not in errors:
        raise EvaluationError(missing_score(score, option))
    return errors[score]
