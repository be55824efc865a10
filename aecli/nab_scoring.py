"""The Numenta Anomaly Benchmark's score: per-step detections against labelled windows,
rewarding early detection and penalising false alarms, with one threshold for a set of files.

numpy only, written from NAB's rules (../shared/data/nab/README.md): a detection inside a window
counts once, at its earliest step, as a true positive weighted by a scaled sigmoid of its place
in the window (tp_weight at the window's first step, near 0 at its last); a detection outside
every window is a false positive weighted by the same sigmoid of its distance past the previous
window (-fp_weight before any window or well past one); a window without a detection costs
-fn_weight. The first min(15% of rows, 750) steps of a file are its probationary period: never
scored. Totals are normalised: 0 = detecting nothing, 100 = every window at its first step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aecli.data.series import probation_rows

PROFILES: dict[str, tuple[float, float, float]] = {  # (tp, fp, fn) weights, NAB's three profiles
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}
OUTSIDE = -1  # a step in no window
PROBATION = -2  # a step in the probationary period


def scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    """2 / (1 + exp(5 p)) - 1: about +0.987 at p = -1 (a window's start), 0 at p = 0, -1 past p = 3."""
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * position)) - 1.0
    return np.where(position > 3.0, -1.0, value)


@dataclass
class NabFile:
    """One scored file: a score per step, and its labelled windows as (first, last) steps, inclusive."""

    scores: np.ndarray
    windows: list[tuple[int, int]]


@dataclass
class _Steps:
    """The scored steps of a set of files, with what detecting each would be worth."""

    scores: np.ndarray
    window: np.ndarray  # index into all windows of the set, or OUTSIDE
    tp_value: np.ndarray  # unweighted sigmoid value of a detection inside its window (1 at the start)
    fp_value: np.ndarray  # unweighted sigmoid value of a detection outside every window (<= 0)
    windows: int


def _steps(files: Sequence[NabFile]) -> _Steps:
    parts: list[tuple[np.ndarray, ...]] = []
    window_base = 0
    max_tp = float(scaled_sigmoid(np.array(-1.0)))
    for file in files:
        rows = len(file.scores)
        index = np.arange(rows)
        window = np.full(rows, OUTSIDE)
        tp_value = np.zeros(rows)
        fp_value = np.full(rows, -1.0)  # before any window
        for number, (first, last) in enumerate(sorted(file.windows)):
            width = last - first + 1
            inside = slice(first, last + 1)
            window[inside] = window_base + number
            tp_value[inside] = scaled_sigmoid(-(last - index[inside] + 1) / width) / max_tp
            after = index > last
            fp_value[after] = scaled_sigmoid(np.abs(last - index[after]) / max(width - 1, 1))
        window[: probation_rows(rows)] = PROBATION
        kept = window != PROBATION
        scores = np.nan_to_num(np.asarray(file.scores, np.float64), nan=-np.inf)
        parts.append((scores[kept], window[kept], tp_value[kept], fp_value[kept]))
        window_base += len(file.windows)
    if not parts:
        return _Steps(np.zeros(0), np.zeros(0, int), np.zeros(0), np.zeros(0), 0)
    scores, window, tp_value, fp_value = (np.concatenate(column) for column in zip(*parts, strict=True))
    return _Steps(scores, window, tp_value, fp_value, window_base)


@dataclass
class NabScore:
    profile: str
    threshold: float
    raw: float
    normalised: float  # 0 = detect nothing, 100 = every window at its first step
    detected_windows: int
    windows: int
    false_positives: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "profile": self.profile,
            "threshold": self.threshold,
            "score": round(self.normalised, 4),
            "raw": round(self.raw, 6),
            "detected_windows": self.detected_windows,
            "windows": self.windows,
            "false_positives": self.false_positives,
        }


def nab_score(files: Sequence[NabFile], profile: str = "standard", threshold: float | None = None) -> NabScore:
    """The set's NAB score at `threshold` (a step is a detection when its score >= it), or at the
    threshold that maximises the total (NAB's own choice), found by sweeping every distinct score."""
    tp_weight, fp_weight, fn_weight = PROFILES[profile]
    steps = _steps(files)
    null = -fn_weight * steps.windows
    perfect = tp_weight * steps.windows
    order = np.argsort(-steps.scores, kind="stable")
    scores = steps.scores[order]
    window = steps.window[order]
    tp_value = steps.tp_value[order] * tp_weight
    fp_value = steps.fp_value[order] * fp_weight

    best_tp = np.full(steps.windows, -np.inf)
    total = null  # nothing detected yet: every window a miss
    best = (null, math.inf, 0, 0)  # (total, threshold, windows detected, false positives)
    detected = false_positives = 0
    for position in range(len(scores)):
        if threshold is not None and scores[position] < threshold:
            break
        if window[position] == OUTSIDE:
            total += fp_value[position]
            false_positives += 1
        else:
            number = window[position]
            if best_tp[number] == -np.inf:
                total += fn_weight + tp_value[position]
                best_tp[number] = tp_value[position]
                detected += 1
            elif tp_value[position] > best_tp[number]:
                total += tp_value[position] - best_tp[number]
                best_tp[number] = tp_value[position]
        last_of_its_score = position + 1 == len(scores) or scores[position + 1] != scores[position]
        if last_of_its_score and (threshold is not None or total > best[0]) and np.isfinite(scores[position]):
            best = (total, float(scores[position]), detected, false_positives)
    if threshold is not None:
        best = (total, threshold, detected, false_positives)
    raw, chosen, found, alarms = best
    normalised = 100.0 * (raw - null) / (perfect - null) if perfect > null else 0.0
    return NabScore(profile, chosen, raw, normalised, found, steps.windows, alarms)
