"""`GET /metrics` of `aecli serve`, in Prometheus' text format (prometheus_client).

Besides what every service exposes (requests by route and status, latency, rows, model calls,
batch sizes, queue depth), the score distribution itself: quantiles of the last SCORE_WINDOW
scores and the share of them flagged, beside the share the run's calibration expected
(thresholds.json's expected_false_positive_rate). A flag rate drifting away from the expected one
shows on a dashboard before anyone reads a single flag.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

SCORE_WINDOW = 10_000  # the recent scores the quantiles and the alert rate are computed over
ROUTES = ("/score", "/embed", "/reconstruct", "/health", "/health/live", "/health/ready", "/metadata", "/metrics")
QUANTILES = (0.5, 0.9, 0.99)


class ServiceMetrics:
    """The service's counters and histograms, on a registry of its own."""

    def __init__(
        self, expected_alert_rate: Callable[[], float | None], queue_depth: Callable[[], int], calls: Callable[[], int]
    ):
        self.registry = CollectorRegistry()
        self.requests = Counter("aecli_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = Histogram("aecli_request_seconds", "time to answer a request", ["route"], registry=self.registry)
        self.rows = Counter("aecli_rows", "rows received, by route", ["route"], registry=self.registry)
        self.flagged = Counter("aecli_anomalies_flagged", "rows /score flagged as anomalies", registry=self.registry)
        self.batch_rows = Histogram(
            "aecli_batch_rows",
            "rows per model call (gathered across concurrent requests)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=self.registry,
        )
        self.reloads = Counter(
            "aecli_reloads", "reloads of the run (SIGHUP, /admin/reload)", ["result"], registry=self.registry
        )
        self.recent: deque[tuple[float, bool]] = deque(maxlen=SCORE_WINDOW)
        self.registry.register(_Live(self, expected_alert_rate, queue_depth, calls))

    def answered(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"  # (arbitrary paths must not grow the label set)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def scored(self, scores: np.ndarray, flagged: np.ndarray) -> None:
        self.rows.labels("/score").inc(len(scores))
        self.flagged.inc(int(np.count_nonzero(flagged)))
        self.recent.extend(zip(scores.tolist(), flagged.tolist(), strict=True))


class _Live(Collector):
    """What is read at scrape time: the queue, the model calls, the recent score distribution."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        expected: Callable[[], float | None],
        queue_depth: Callable[[], int],
        calls: Callable[[], int],
    ) -> None:
        self.metrics, self.expected, self.queue_depth, self.calls = metrics, expected, queue_depth, calls

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("aecli_queue_depth", "requests waiting for a model call", value=self.queue_depth())
        yield GaugeMetricFamily("aecli_model_calls", "model calls made since the start", value=self.calls())
        recent = list(self.metrics.recent)
        quantiles = GaugeMetricFamily(
            "aecli_score_recent", f"quantiles of the last {SCORE_WINDOW:,} scores", labels=["quantile"]
        )
        rate = GaugeMetricFamily("aecli_alert_rate_recent", f"share of the last {SCORE_WINDOW:,} scores flagged")
        if recent:
            scores = np.array([score for score, _ in recent], np.float64)
            finite = scores[np.isfinite(scores)]
            for q in QUANTILES if len(finite) else ():
                quantiles.add_metric([str(q)], float(np.quantile(finite, q)))
            rate.add_metric([], sum(flag for _, flag in recent) / len(recent))
        yield quantiles
        yield rate
        expected = self.expected()
        if expected is not None:
            yield GaugeMetricFamily(
                "aecli_alert_rate_expected",
                "share of normal rows the calibrated threshold flags (thresholds.json)",
                value=expected,
            )
