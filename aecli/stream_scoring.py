"""Live scoring of a series run (`aecli monitor`): rows in arrival order, each scored from the
rows up to it only, in bounded memory whatever the length of the stream.

A row's raw score is the error of the window that ends at it (`anomaly.points: last`); with
`anomaly.likelihood`, OnlineLikelihood turns it into the same value that
time_anomalies.stream_likelihood computes over a whole file, one row at a time with running
sums over a bounded history. The last size - 1 scaled rows are all that is kept of the past.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from aecli.config import StreamLikelihoodConfig
from aecli.data.scaling import Scaling
from aecli.evaluation import CALL_ROWS, per_sample_errors, predict_fixed
from aecli.time_anomalies import LIKELIHOOD_UNIT, floored_spread


class OnlineLikelihood:
    """time_anomalies.stream_likelihood, one score at a time: O(1) per row, memory bounded by
    `history` (+ `short` + `hold_off`)."""

    def __init__(self, config: StreamLikelihoodConfig) -> None:
        self.config = config
        self.recent: deque[float] = deque(maxlen=config.short)
        self.history: deque[float] = deque()
        self.total = 0.0
        self.squares = 0.0
        self.held: deque[float] = deque(maxlen=max(config.hold_off, 1))

    def state(self) -> dict[str, list[float]]:
        return {"recent": list(self.recent), "history": list(self.history), "held": list(self.held)}

    def restore(self, state: dict[str, list[float]]) -> None:
        """Continue from `state()`; the running sums are recomputed from the history."""
        self.recent.extend(float(value) for value in state["recent"])
        self.history.extend(float(value) for value in state["history"][-self.config.history :])
        self.total = math.fsum(self.history)
        self.squares = math.fsum(value * value for value in self.history)
        self.held.extend(float(value) for value in state["held"])

    def update(self, raw: float) -> float:
        """The likelihood of this step; 0 before the first raw score and during the warm-up."""
        from scipy.special import log_ndtr

        if not math.isfinite(raw):
            return 0.0
        self.recent.append(raw)
        averaged = sum(self.recent) / len(self.recent)
        count = len(self.history)
        value = 0.0
        if count >= self.config.warm_up:
            mean = self.total / count
            spread = floored_spread(math.sqrt(max(self.squares / count - mean * mean, 0.0)), mean)
            value = max(float(log_ndtr(-(averaged - mean) / spread)) / LIKELIHOOD_UNIT, 0.0)
        self.history.append(averaged)
        self.total += averaged
        self.squares += averaged * averaged
        if count + 1 > self.config.history:
            dropped = self.history.popleft()
            self.total -= dropped
            self.squares -= dropped * dropped
        if self.config.hold_off:
            before = max(self.held, default=-math.inf)
            self.held.append(value)
            return value if value > before else 0.0
        return value


class StreamScorer:
    """Scores rows as they arrive: `score(values)` for the rows of one arrival, in order."""

    def __init__(
        self,
        model: Any,
        scaling: Scaling,
        sample_shape: tuple[int, ...],
        score: str,
        likelihood: StreamLikelihoodConfig | None,
    ) -> None:
        self.model = model
        self.scaling = scaling
        self.size, self.channels = sample_shape
        self.score_name = score
        self.past = np.zeros((0, 0), np.float32)  # the last size - 1 scaled rows
        self.likelihood = None if likelihood is None else OnlineLikelihood(likelihood)

    def state(self) -> dict[str, Any]:
        """What scoring the next row needs of the past: saved by monitor --state, read back by restore."""
        likelihood = None if self.likelihood is None else self.likelihood.state()
        return {"past": self.past.astype(np.float64).tolist(), "likelihood": likelihood}

    def restore(self, state: dict[str, Any]) -> None:
        past = np.asarray(state["past"], np.float32)
        if past.size and (past.ndim != 2 or len(past) > self.size - 1 or past.shape[1] != self.channels):
            raise ValueError(f"its last rows have the shape {past.shape}, not that of this run's windows")
        self.past = past if past.size else np.zeros((0, 0), np.float32)
        if (state["likelihood"] is None) != (self.likelihood is None):
            raise ValueError("it was saved by a run with another anomaly.likelihood")
        if self.likelihood is not None:
            self.likelihood.restore(state["likelihood"])

    def score(self, values: np.ndarray) -> np.ndarray:
        """One score per row of `values` (rows, channels): NaN (0 with the likelihood) for rows
        that end no window yet."""
        scaled = self.scaling.apply(values.astype(np.float64))
        joined = scaled if not self.past.size else np.concatenate([self.past, scaled])
        raw = np.full(len(values), np.nan)
        complete = len(joined) - self.size + 1  # windows that end at one of the new rows
        if complete > 0:
            ending = np.lib.stride_tricks.sliding_window_view(joined, self.size, axis=0)[-min(complete, len(values)) :]
            windows = np.ascontiguousarray(ending.transpose(0, 2, 1))
            errors = per_sample_errors(windows, predict_fixed(self.model, windows, CALL_ROWS))[self.score_name]
            raw[len(values) - len(windows) :] = errors
        self.past = joined[-(self.size - 1) :] if self.size > 1 else joined[:0]
        if self.likelihood is None:
            return raw
        return np.array([self.likelihood.update(float(value)) for value in raw])
