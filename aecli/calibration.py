"""A run's calibrated anomaly threshold: thresholds.json.

Training records one (the config's `anomaly.threshold`); `aecli threshold` replaces it from the
per-sample errors the run already stores, in seconds and without touching the model: the
training errors (train_errors.csv), the held-out validation errors (val_errors.csv: normal data
for `fpr:F`), the test errors with their labels (errors.csv: for `best_f1`), or errors of
another file the caller scored. Every command that flags samples uses the active threshold.
Earlier thresholds stay in the file, under "previous".
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aecli.atomic import write_json_atomic
from aecli.errors import EvaluationError, RunError, clip
from aecli.reporting import read_error_column
from aecli.runs import now_iso
from aecli.thresholds import SIGNED_SCORES, ThresholdSpec, false_positive_rate, parse_threshold, resolve_threshold

THRESHOLDS_FILE = "thresholds.json"
VALIDATION_ERRORS = "val_errors.csv"
# Per-sample scores a threshold can be on (xent: text models; knn, combined: runs that keep their codes).
SCORES = ("mse", "mae", "bce", "dssim", "xent", "knn", "combined")


def chosen_score(requested: str | None, metrics: dict[str, Any]) -> str:
    """--score, or the score the run's threshold was recorded on."""
    score = requested or str(metrics["train_errors"].get("score", "mse"))
    if score not in SCORES:
        raise EvaluationError(f"--score {score!r}: expected one of {', '.join(SCORES)}")
    return score


def missing_score(score: str, data: str) -> str:
    """Why a per-sample error could not be computed for `data`."""
    if score == "dssim":
        return f"--score dssim: compares images (height, width, channels), and {data} is not images"
    return f"--score {score}: needs data in [0, 1], and {data} is outside it"


@dataclass(frozen=True)
class Errors:
    """Per-sample scores of one set of rows, where they came from, and (labelled) which are anomalies."""

    scores: np.ndarray
    source: str  # e.g. "validation split (val_errors.csv)"
    is_anomaly: np.ndarray | None = None

    def described(self) -> str:
        return f"{self.source}, {len(self.scores):,} rows"


@dataclass(frozen=True)
class Threshold:
    """An active threshold: how it was chosen, on which errors, and what it flags."""

    method: str
    score: str
    value: float
    computed_from: str
    expected_false_positive_rate: float | None  # share of held-out normal rows it flags
    false_positive_rate_on: str | None
    created: str
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(
    spec: ThresholdSpec,
    score: str,
    train: Errors,
    normal: Errors | None = None,
    labelled: Errors | None = None,
    command: str | None = None,
) -> Threshold:
    """The threshold `spec` computed from stored errors. contamination:F flags a share F of the
    training rows (PyOD's sense: the expected share of outliers in the training data)."""
    needs = spec.needs
    if needs == "normal" and normal is None:
        raise EvaluationError(
            f"threshold {spec}: needs held-out normal data, and the run stores no validation errors "
            f"({VALIDATION_ERRORS}); calibrate it with aecli threshold RUN --method {spec} --normal-data FILE"
        )
    if needs == "labelled" and (labelled is None or labelled.is_anomaly is None):
        raise EvaluationError(f"threshold {spec}: needs labels: give --normal-classes or --anomaly-data FILE")
    source = {"training": train, "scored": train, "normal": normal, "labelled": labelled}.get(needs)
    value = resolve_threshold(
        spec,
        train.scores,
        labelled.scores if needs == "labelled" and labelled is not None else train.scores,
        None if normal is None else normal.scores,
        None if labelled is None else labelled.is_anomaly,
        signed=score in SIGNED_SCORES,
    )
    # What it flags of held-out normal data; for fpr those are the rows it was chosen on.
    rate_on = None if normal is None else normal.described() + (" (chosen on them)" if needs == "normal" else "")
    return Threshold(
        method=str(spec),
        score=score,
        value=value,
        computed_from="the method's own number" if source is None else source.described(),
        expected_false_positive_rate=None if normal is None else false_positive_rate(value, normal.scores),
        false_positive_rate_on=rate_on,
        created=now_iso(),
        command=command,
    )


def read_thresholds(run_dir: Path) -> dict[str, Any] | None:
    """thresholds.json, or None for a run that has none (trained before it existed)."""
    path = run_dir / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        float(record["active"]["value"]), str(record["active"]["score"]), str(record["active"]["method"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: unreadable ({clip(str(exc))}); fix or delete it, then run aecli threshold") from None
    return dict(record)


def active_threshold(run_dir: Path, score: str) -> dict[str, Any] | None:
    """The run's calibrated threshold, when it was calibrated on `score` (a threshold on mse says
    nothing about mae)."""
    record = read_thresholds(run_dir)
    if record is None or record["active"]["score"] != score:
        return None
    return dict(record["active"])


def record_threshold(run_dir: Path, threshold: Threshold) -> dict[str, Any]:
    """Make `threshold` the active one; the one it replaces is kept under "previous"."""
    record = read_thresholds(run_dir) or {"active": None, "previous": []}
    previous = [*record.get("previous", []), *([record["active"]] if record.get("active") else [])]
    updated = {"active": threshold.to_dict(), "previous": previous}
    write_json_atomic(run_dir / THRESHOLDS_FILE, updated)
    return updated


def training_errors(run_dir: Path, score: str) -> Errors:
    errors = stored_errors(run_dir, "train_errors.csv", score, "training split")
    if errors is None:
        raise RunError(f"run {run_dir} has no train_errors.csv to set a threshold from; use a number")
    return errors


def stored_errors(run_dir: Path, name: str, score: str, what: str) -> Errors | None:
    """A stored errors file's `score` column (None when the run has no such file)."""
    path = run_dir / name
    if not path.is_file():
        return None
    try:
        return Errors(read_error_column(path, score), f"{what} ({name})")
    except KeyError:
        raise EvaluationError(f"--score {score}: {path} has no {score} column") from None


def labelled_test_errors(run_dir: Path, score: str, normal_classes: list[str]) -> Errors:
    """The test split's stored errors, anomalies being the rows whose label is not a normal class."""
    path = run_dir / "errors.csv"
    scores = stored_errors(run_dir, "errors.csv", score, "test split")
    if scores is None:
        raise RunError(f"run {run_dir} has no errors.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        labels = [row.get("label", "") for row in csv.DictReader(handle)]
    if not any(labels):
        raise EvaluationError(f"--normal-classes: the run's test split has no labels ({path})")
    unknown = sorted(set(normal_classes) - set(labels))
    if unknown:
        raise EvaluationError(f"--normal-classes {','.join(unknown)}: no such label in the test split")
    is_anomaly = np.array([label not in normal_classes for label in labels])
    source = f"test split (errors.csv) labelled by --normal-classes {','.join(normal_classes)}"
    return Errors(scores.scores, source, is_anomaly)


@dataclass(frozen=True)
class InUse:
    """The threshold a command flags with: the score it is on, its value, and how it was chosen."""

    score: str
    value: float
    method: str


def threshold_in_use(run_dir: Path, metrics: dict[str, Any], score: str | None, threshold: str | None) -> InUse:
    """The run's calibrated threshold (thresholds.json) on the chosen score, unless `threshold`
    (a --threshold option) names another; without a calibrated one, the run's default method."""
    chosen = chosen_score(score, metrics)
    calibrated = None if threshold else active_threshold(run_dir, chosen)
    if calibrated is not None:
        return InUse(chosen, float(calibrated["value"]), f"{calibrated['method']} ({THRESHOLDS_FILE})")
    spec = parse_threshold(threshold or metrics["train_errors"]["default_threshold"])
    if spec.needs == "labelled":
        raise EvaluationError(f"threshold {spec}: needs labels; choose it first with aecli threshold --method {spec}")
    normal = stored_errors(run_dir, VALIDATION_ERRORS, chosen, "validation split") if spec.needs == "normal" else None
    # contamination:F, which needs every score first, is taken in aecli threshold's sense: of the training rows
    return InUse(chosen, calibrate(spec, chosen, training_errors(run_dir, chosen), normal).value, str(spec))
