"""Report files of a run: history.csv, errors.csv, metrics.json (plots join them later)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from aecli.evaluation import label_name
from aecli.runs import write_json_atomic, write_text_atomic

HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "learning_rate", "seconds")


def write_history_csv(path: Path, rows: list[dict[str, float]]) -> None:
    columns = [column for column in HISTORY_COLUMNS if any(column in row for row in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: f"{value:.8g}" for key, value in row.items()} for row in rows)
    write_text_atomic(path, buffer.getvalue())


def read_history_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]


def write_errors_csv(
    path: Path, errors: dict[str, np.ndarray], labels: np.ndarray | None, label_names: list[str] | None
) -> None:
    """One row per sample: its index in the evaluated split, its label and each error measure."""
    names = list(errors)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "label", *names])
    for index in range(len(errors["mse"])):
        label = "" if labels is None else label_name(labels[index], label_names)
        writer.writerow([index, label, *(f"{errors[name][index]:.8g}" for name in names)])
    write_text_atomic(path, buffer.getvalue())


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> None:
    write_json_atomic(path, _json_safe(metrics))


def _json_safe(value: Any) -> Any:
    """NaN and inf have no JSON spelling: they become null."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
