"""Anomaly thresholds: how a run turns reconstruction errors into flags.

Pure Python and numpy (no TensorFlow), so the config can validate a threshold when it is
read. A sample is flagged when its score is strictly greater than the threshold. Each method
says which errors it is computed from (`ThresholdSpec.needs`): the training errors a run stores
(train_errors.csv), held-out normal errors (the validation split's, val_errors.csv, or another
file's), labelled errors, or the scores being flagged themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aecli.errors import EvaluationError

THRESHOLD_FORMS = (
    "max, percentile:Q, mean_std:K, contamination:F, fpr:F, best_f1, value:V or a number "
    "(percentile/mean_std/max of the training errors, fpr of held-out normal data)"
)
# What each kind is computed from; see resolve_threshold.
NEEDS = {
    "max": "training",
    "percentile": "training",
    "mean_std": "training",
    "contamination": "scored",
    "fpr": "normal",
    "best_f1": "labelled",
    "value": "nothing",
}


# anomaly.threshold's default: flag 5% of held-out normal rows. The training rows' own 95th
# percentile flags far more of new normal rows (digits: 23% of its validation rows), because a
# model fits the rows it was trained on better than new ones.
AUTO_THRESHOLD = "auto"
SIGNED_SCORES = ("combined",)  # standardised scores: below 0 for rows more typical than the median
AUTO_HELD_OUT = "fpr:0.05"
AUTO_WITHOUT_HELD_OUT = "percentile:95"


def auto_threshold(spec: str, has_held_out_rows: bool) -> ThresholdSpec:
    """`spec` parsed, with `auto` resolved: fpr:0.05 of the validation rows where the run holds
    some out, else the 95th percentile of the training errors."""
    if spec.strip() != AUTO_THRESHOLD:
        return parse_threshold(spec)
    return parse_threshold(AUTO_HELD_OUT if has_held_out_rows else AUTO_WITHOUT_HELD_OUT)


@dataclass(frozen=True)
class ThresholdSpec:
    kind: str  # a key of NEEDS
    parameter: float = 0.0

    def __str__(self) -> str:
        """The spec as parse_threshold reads it back, exactly (a config records it)."""
        if self.kind in ("max", "best_f1"):
            return self.kind
        number = str(int(self.parameter)) if self.parameter.is_integer() else repr(self.parameter)
        return number if self.kind == "value" else f"{self.kind}:{number}"

    @property
    def needs(self) -> str:
        """training | normal | labelled | scored | nothing: the errors this threshold comes from."""
        return NEEDS[self.kind]


def parse_threshold(spec: str, what: str = "--threshold") -> ThresholdSpec:
    """`max`, `best_f1`, `percentile:95`, `mean_std:1`, `contamination:0.1`, `fpr:0.01`,
    `value:0.02` or a plain number."""
    spec = spec.strip()
    if spec in ("max", "best_f1"):
        return ThresholdSpec(spec)
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
        "fpr": 0 <= parameter < 1,
    }
    if kind not in valid:
        raise EvaluationError(f"{what} {spec!r}: unknown kind {kind!r}; expected {THRESHOLD_FORMS}")
    if not valid[kind]:
        ranges = {
            "percentile": "in (0, 100]",
            "contamination": "in (0, 1)",
            "fpr": "in [0, 1)",
            "value": "finite and >= 0 (errors are)",
        }
        raise EvaluationError(f"{what} {spec!r}: {kind} must be {ranges.get(kind, 'finite')}")
    return ThresholdSpec(kind, parameter)


def resolve_threshold(
    spec: ThresholdSpec,
    train_scores: np.ndarray,
    scores: np.ndarray,
    normal_scores: np.ndarray | None = None,
    is_anomaly: np.ndarray | None = None,
    signed: bool = False,
) -> float:
    """The threshold's value (`signed`: the scores are standardised and can be negative, so a
    negative threshold is one like any other).

    max, percentile and mean_std: of the training errors. contamination: flags that share of
    `scores`. fpr:F: the lowest threshold that flags at most a fraction F of `normal_scores`
    (held-out normal data). best_f1: the threshold with the best F1 on `scores` labelled by
    `is_anomaly` (tuned on those labels: an optimistic estimate for the same rows).
    """
    value = _threshold_value(spec, train_scores, scores, normal_scores, is_anomaly)
    return value if signed and math.isfinite(value) else checked_value(spec, value)


def _threshold_value(
    spec: ThresholdSpec,
    train_scores: np.ndarray,
    scores: np.ndarray,
    normal_scores: np.ndarray | None,
    is_anomaly: np.ndarray | None,
) -> float:
    if spec.kind == "max":
        return float(np.max(train_scores))
    if spec.kind == "percentile":
        return float(np.percentile(train_scores, spec.parameter))
    if spec.kind == "mean_std":
        return float(np.mean(train_scores) + spec.parameter * np.std(train_scores))
    if spec.kind == "contamination":
        return float(np.quantile(scores, 1 - spec.parameter))
    if spec.kind == "fpr":
        if normal_scores is None or not len(normal_scores):
            raise EvaluationError(f"threshold {spec}: needs held-out normal data (a validation split or a file)")
        return fpr_threshold(normal_scores, spec.parameter)
    if spec.kind == "best_f1":
        if is_anomaly is None or not is_anomaly.any() or is_anomaly.all():
            raise EvaluationError(f"threshold {spec}: needs labelled data holding both normal samples and anomalies")
        return best_f1_threshold(scores, is_anomaly)
    return spec.parameter


def checked_value(spec: ThresholdSpec, value: float) -> float:
    """A computed threshold must be one a score can exceed or not: errors are never negative, so
    a negative one (mean_std:-100) would flag every row, and `value:-1` is refused the same way."""
    if not math.isfinite(value) or value < 0:
        raise EvaluationError(
            f"threshold {spec}: gives {value:.6g}, below every error (errors are >= 0), so it would flag every row; "
            "choose a larger parameter"
        )
    return value


def fpr_threshold(normal_scores: np.ndarray, rate: float) -> float:
    """The lowest score threshold t with mean(normal_scores > t) <= rate: the (k+1)-th largest
    normal score, k = floor(rate * n) (ties at t are not flagged, so at most k are)."""
    ranked = np.sort(np.asarray(normal_scores, np.float64))[::-1]
    return float(ranked[min(math.floor(rate * len(ranked) + 1e-9), len(ranked) - 1)])


def best_f1_threshold(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """The threshold t maximising F1 of `scores > t` against `is_anomaly`; among equal F1 the
    highest t (fewest flags). Candidates: every distinct score, and just below the lowest."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    ranked, positive = np.asarray(scores, np.float64)[order], np.asarray(is_anomaly, bool)[order]
    # Flagging the top i samples (those above the i-th largest score's next lower value).
    true_positives = np.cumsum(positive)
    flagged = np.arange(1, len(ranked) + 1)
    last_of_value = np.r_[ranked[1:] != ranked[:-1], True]  # cut only between distinct scores
    f1 = 2 * true_positives / (flagged + positive.sum())
    f1 = np.where(last_of_value, f1, -1.0)
    best = int(np.argmax(f1))  # the first maximum: the fewest flags
    below = ranked[best + 1] if best + 1 < len(ranked) else np.nextafter(ranked[best], -np.inf)
    return float(below)


def false_positive_rate(threshold: float, normal_scores: np.ndarray) -> float:
    """The share of normal samples that `threshold` flags."""
    return float(np.mean(np.asarray(normal_scores) > threshold)) if len(normal_scores) else float("nan")
