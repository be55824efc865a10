"""Anomalies located in time: window errors become per-step scores, flagged steps become
ranges, and labelled anomalies (a label column, or NAB-style windows) are scored against them.

numpy only. A step's score comes from the windows that cover it: their mean, their max, or
`all` (the smallest: a step is flagged only when every window covering it is over the
threshold, as in the Keras example "Timeseries anomaly detection using an Autoencoder"), or,
causally, from the one window that ends at it (`last`: a live stream knows no later rows; the
first size - 1 steps, which end no window, have no score and are never flagged).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aecli.data.arrays import Timeline, show_time
from aecli.data.series import parse_moment
from aecli.errors import DataError, clip, shorten

MAX_LABEL_FILE_BYTES = 64 * 2**20
POINTS = ("mean", "max", "all", "last")  # as anomaly.points spells them
LIKELIHOOD_UNIT = math.log(1e-10)  # the likelihood is log(tail probability) in these units: 1.0 = a tail of 1e-10
SPREAD_FLOOR = 0.1  # the likelihood's spread is at least this share of the mean error


def floored_spread(spread: Any, mean: Any) -> Any:
    """The spread the likelihood divides by: a near-constant history must not make every wobble improbable."""
    return np.maximum(spread, 1e-12 + SPREAD_FLOOR * np.abs(mean))


def step_scores(window_scores: np.ndarray, starts: np.ndarray, size: int, steps: int, points: str) -> np.ndarray:
    """Per-step scores from per-window scores; steps no window covers (with `last`: ends) are NaN."""
    if points == "last":
        out = np.full(steps, np.nan)
        out[starts + size - 1] = window_scores
        return out
    covered = (starts[:, None] + np.arange(size)).ravel()
    repeated = np.repeat(window_scores.astype(np.float64), size)
    if points == "mean":
        total = np.bincount(covered, repeated, minlength=steps)
        count = np.bincount(covered, minlength=steps)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count
    out = np.full(steps, -np.inf if points == "max" else np.inf)
    (np.maximum if points == "max" else np.minimum).at(out, covered, repeated)
    out[~np.isfinite(out)] = np.nan
    return out


def stream_likelihood(scores: np.ndarray, short: int, history: int, warm_up: int, hold_off: int) -> np.ndarray:
    """Per-step scores that mean the same on every series, from Numenta's "anomaly likelihood":
        how improbable the mean of the last `short` scores is under the normal distribution of those
        means over the `history` steps before, as -log10(tail probability) / 10 (0.5 is a tail of
        1e-5, 1 of 1e-10; not clipped, so the most improbable steps still rank above the merely
        improbable). The spread is floored at 10% of the mean, so that a near-constant error does not
    make every wobble improbable. Causal: a step's value uses steps up to it only. Steps with fewer than `warm_up`
        earlier means, and steps without a score, give 0. With `hold_off`, a step keeps its value
        only when it is above every value of the `hold_off` steps before it (else 0): one alarm per
        episode, at its onset, instead of a run of alarms as the error decays."""
    from scipy.special import log_ndtr

    out = np.zeros(len(scores))
    finite = np.flatnonzero(np.isfinite(scores))
    if not len(finite):
        return out
    first = int(finite[0])
    values = np.nan_to_num(np.asarray(scores[first:], np.float64), nan=0.0)
    cumulative = np.r_[0.0, np.cumsum(values)]
    ends = np.arange(1, len(values) + 1)
    averaged = (cumulative[ends] - cumulative[np.maximum(ends - short, 0)]) / np.minimum(ends, short)
    sums, squares = (np.r_[0.0, np.cumsum(v)] for v in (averaged, averaged**2))
    before = np.arange(len(values))  # the means of steps [lo, t) describe step t
    lo = np.maximum(before - history, 0)
    count = before - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums[before] - sums[lo]) / count
        spread = np.sqrt(np.maximum((squares[before] - squares[lo]) / count - mean**2, 0.0))
        value = log_ndtr(-(averaged - mean) / floored_spread(spread, mean)) / LIKELIHOOD_UNIT
    value[count < warm_up] = 0.0
    value = np.maximum(np.nan_to_num(value), 0.0)
    if hold_off:
        padded = np.r_[np.full(hold_off, -np.inf), value]
        recent = np.lib.stride_tricks.sliding_window_view(padded[:-1], hold_off).max(axis=1)
        value = np.where(value > recent, value, 0.0)
    out[first:] = value
    return out


def ranges_of(flags: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of True as (first step, last step), inclusive."""
    padded = np.r_[False, flags, False].astype(np.int8)
    edges = np.diff(padded)
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist(), strict=True))


@dataclass
class TimeAnomalies:
    """Per-step scores and flags of one scored stretch, and the ranges they form."""

    scores: np.ndarray
    flags: np.ndarray
    ranges: list[tuple[int, int]]
    threshold: float
    points: str

    def range_rows(self, timeline: Timeline) -> list[dict[str, Any]]:
        """anomalies.csv: one row per flagged range."""
        rows = []
        for first, last in self.ranges:
            peak = first + int(np.nanargmax(self.scores[first : last + 1]))
            rows.append(
                {
                    "start": _when(timeline, first),
                    "end": _when(timeline, last),
                    "steps": last - first + 1,
                    "peak_time": _when(timeline, peak),
                    "peak_score": float(self.scores[peak]),
                }
            )
        return rows


def locate_anomalies(window_scores: np.ndarray, timeline: Timeline, threshold: float, points: str) -> TimeAnomalies:
    scores = step_scores(window_scores, timeline.starts, timeline.size, len(timeline.times), points)
    return flag_steps(scores, threshold, points)


def flag_steps(scores: np.ndarray, threshold: float, points: str) -> TimeAnomalies:
    """Steps over the threshold (steps no window covers never are), and the ranges they form."""
    flags = np.nan_to_num(scores, nan=-np.inf) > threshold
    return TimeAnomalies(scores, flags, ranges_of(flags), threshold, points)


def _when(timeline: Timeline, step: int) -> str:
    moment = timeline.times[step]
    return show_time(moment, timeline.zone) if timeline.timed else str(int(moment))


def detection_report(found: TimeAnomalies, labels: np.ndarray, timeline: Timeline) -> dict[str, Any]:
    """Point-wise precision/recall/F1, which labelled windows were detected and how early, and
    how many flagged ranges fall outside every labelled window."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, found.flags, average="binary", pos_label=True, zero_division=0
    )
    windows = []
    for first, last in ranges_of(labels):
        hits = np.flatnonzero(found.flags[first : last + 1])
        entry: dict[str, Any] = {
            "start": _when(timeline, first),
            "end": _when(timeline, last),
            "detected": bool(len(hits)),
        }
        if len(hits):
            entry["first_flag"] = _when(timeline, first + int(hits[0]))
            entry["delay_steps"] = int(hits[0])
            entry["delay_fraction"] = round(int(hits[0]) / (last - first + 1), 4)
        windows.append(entry)
    outside = [r for r in found.ranges if not labels[r[0] : r[1] + 1].any()]
    return {
        "point_precision": float(precision),
        "point_recall": float(recall),
        "point_f1": float(f1),
        "labelled_steps": int(labels.sum()),
        "flagged_steps": int(found.flags.sum()),
        "labelled_windows": len(windows),
        "windows_detected": sum(entry["detected"] for entry in windows),
        "flagged_ranges": len(found.ranges),
        "ranges_outside_windows": len(outside),
        "windows": windows,
    }


def labels_from_windows(path: Path, source: str, timeline: Timeline) -> np.ndarray:
    """Per-step labels from a NAB-style windows file, {file: [[start, end], ...]}, for the
    evaluated file: its entry is the key that is its name, or that ends with /its name."""
    entries = _read_windows_file(path)
    name = os.path.basename(source)
    matches = [key for key in entries if key in (source, name) or key.endswith("/" + name)]
    if not matches:
        named = clip(", ".join(entries) or "no files")
        raise DataError(f"--anomaly-windows {path}: has no entry for {name}; it names {named}")
    if len(matches) > 1:
        raise DataError(f"--anomaly-windows {path}: {len(matches)} entries match {name}: {clip(', '.join(matches))}")
    labels = np.zeros(len(timeline.times), bool)
    for number, window in enumerate(entries[matches[0]], start=1):
        if not isinstance(window, list) or len(window) != 2:
            raise DataError(f"--anomaly-windows {path}: window {number} of {matches[0]} is not [start, end]")
        first, last = (_moment(path, value, timeline) for value in window)
        if last < first:
            raise DataError(f"--anomaly-windows {path}: window {number} of {matches[0]} ends before it starts")
        labels |= (timeline.times >= first) & (timeline.times <= last)
    return labels


def _read_windows_file(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise DataError(f"--anomaly-windows {path}: larger than {MAX_LABEL_FILE_BYTES // 2**20} MiB")
        with path.open(encoding="utf-8") as handle:
            entries = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"--anomaly-windows {path}: cannot read it as JSON ({clip(str(exc))})") from None
    if not isinstance(entries, dict) or not all(isinstance(v, list) for v in entries.values()):
        raise DataError(f"--anomaly-windows {path}: expected {{file: [[start, end], ...]}} (NAB's layout)")
    return entries


def _moment(path: Path, value: Any, timeline: Timeline) -> Any:
    if timeline.times.dtype.kind == "M":
        if not isinstance(value, str):
            raise DataError(f"--anomaly-windows {path}: {shorten(value)} is not a time (write times as text)")
        try:
            return parse_moment(value, timeline.zone, timeline.times.dtype)
        except ValueError as exc:
            raise DataError(f"--anomaly-windows {path}: {shorten(value)} is not a time ({clip(str(exc))})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"--anomaly-windows {path}: {shorten(value)} is not a number (this series is untimed)")
    return value


def stitch_windows(reconstructions: np.ndarray, timeline: Timeline) -> np.ndarray:
    """(steps, channels): each step's reconstruction, averaged over the windows covering it
    (NaN where none does)."""
    steps, channels = len(timeline.times), reconstructions.shape[-1]
    covered = (timeline.starts[:, None] + np.arange(timeline.size)).ravel()
    count = np.bincount(covered, minlength=steps)[:, None]
    total = np.zeros((steps, channels))
    np.add.at(total, covered, reconstructions.reshape(-1, channels).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def stretch_steps(text: str, timeline: Timeline) -> tuple[int, int]:
    """The first and last step of "START,END" (times, or step numbers for an untimed series)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"--range {shorten(text)}: expected START,END, e.g. '2014-04-11 00:00,2014-04-12 00:00'")
    times = timeline.times if timeline.timed else np.arange(len(timeline.times)) + timeline.offset
    bounds: list[Any]
    try:
        if times.dtype.kind == "M":
            bounds = [parse_moment(part, timeline.zone, times.dtype) for part in parts]
        else:
            bounds = [float(part) for part in parts]
    except ValueError as exc:
        kind = "times" if times.dtype.kind == "M" else "numbers (this series has no time column: steps)"
        raise DataError(f"--range {shorten(text)}: START and END must be {kind} ({clip(str(exc))})") from None
    if bounds[1] < bounds[0]:
        raise DataError(f"--range {shorten(text)}: END is before START")
    inside = np.flatnonzero((times >= bounds[0]) & (times <= bounds[1]))
    if not len(inside):
        span = f"{_when(timeline, 0)} to {_when(timeline, len(times) - 1)}"
        raise DataError(f"--range {shorten(text)}: no step of the series lies in it (the series runs from {span})")
    return int(inside[0]), int(inside[-1])
