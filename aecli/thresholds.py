"""Anomaly thresholds: how a run turns reconstruction errors into flags.

Pure Python and numpy (no TensorFlow), so the config can validate a threshold when it is
read. Every method except `contamination` and a plain number is computed from the training
errors a run stores (train_errors.csv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aecli.errors import EvaluationError

THRESHOLD_FORMS = "max, percentile:Q (of the training errors), mean_std:K, contamination:F, or a number"


@dataclass(frozen=True)
class ThresholdSpec:
    kind: str  # max | percentile | mean_std | contamination | value
    parameter: float = 0.0

    def __str__(self) -> str:
        """The spec as parse_threshold reads it back, exactly (a config records it)."""
        if self.kind == "max":
            return "max"
        number = str(int(self.parameter)) if self.parameter.is_integer() else repr(self.parameter)
        return number if self.kind == "value" else f"{self.kind}:{number}"


def parse_threshold(spec: str, what: str = "--threshold") -> ThresholdSpec:
    """`max`, `percentile:95`, `mean_std:1`, `contamination:0.1` or a plain number."""
    spec = spec.strip()
    if spec == "max":
        return ThresholdSpec("max")
    kind, sep, text = spec.partition(":")
    try:
        parameter = float(text if sep else kind)
    except ValueError:
        raise EvaluationError(f"{what} {spec!r}: expected {THRESHOLD_FORMS}") from None
    if not sep:
        kind = "value"
    valid = {
        "value": math.isfinite(parameter) and parameter >= 0,  # errors are never negative
        "percentile": 0 < parameter <= 100,
        "mean_std": math.isfinite(parameter),
        "contamination": 0 < parameter < 1,
    }
    if kind not in valid:
        raise EvaluationError(f"{what} {spec!r}: unknown kind {kind!r}; expected {THRESHOLD_FORMS}")
    if not valid[kind]:
        ranges = {"percentile": "in (0, 100]", "contamination": "in (0, 1)", "value": "finite and >= 0 (errors are)"}
        raise EvaluationError(f"{what} {spec!r}: {kind} must be {ranges.get(kind, 'finite')}")
    return ThresholdSpec(kind, parameter)


def resolve_threshold(spec: ThresholdSpec, train_scores: np.ndarray, scores: np.ndarray) -> float:
    """max, percentile and mean_std use the training errors; contamination flags that share of `scores`."""
    if spec.kind == "max":
        return float(np.max(train_scores))
    if spec.kind == "percentile":
        return float(np.percentile(train_scores, spec.parameter))
    if spec.kind == "mean_std":
        return float(np.mean(train_scores) + spec.parameter * np.std(train_scores))
    if spec.kind == "contamination":
        return float(np.quantile(scores, 1 - spec.parameter))
    return spec.parameter
