"""`GET /metrics` of `aecli serve`, in Prometheus' text format (prometheus_client).

Besides what every service exposes (requests by route and status, latency, rows, model calls,
batch sizes, queue depth), the score distribution itself: quantiles of the last SCORE_WINDOW
scores and the share of them flagged, beside the share the run's calibration expected
(thresholds.json's expected_false_positive_rate). A flag rate drifting away from the expected one
shows on a dashboard before anyone reads a single flag. What belongs to a model carries its
name (`model` label), as a service may serve several runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

SCORE_WINDOW = 10_000  # the recent scores the quantiles and the alert rate are computed over
VERBS = ("score", "embed", "reconstruct", "metadata")  # what a model answers, at /VERB or /models/NAME/VERB
ROUTES = (
    *(f"/{verb}" for verb in VERBS),
    *(f"/models/{{name}}/{verb}" for verb in VERBS),
    *("/models", "/health", "/health/live", "/health/ready", "/metrics", "/admin/reload"),
)
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class ModelGauges:
    """What /metrics reads from one served model at scrape time."""

    expected_alert_rate: Callable[[], float | None]
    queue_depth: Callable[[], int]
    calls: Callable[[], int]
    recent: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=SCORE_WINDOW))


class ServiceMetrics:
    """The service's counters and histograms, on a registry of its own."""

    def __init__(self, models: dict[str, ModelGauges]):
        self.registry = CollectorRegistry()
        self.models = models
        self.requests = Counter("aecli_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = Histogram("aecli_request_seconds", "time to answer a request", ["route"], registry=self.registry)
        self.rows = Counter("aecli_rows", "rows received, by model and verb", ["model", "verb"], registry=self.registry)
        self.flagged = Counter(
            "aecli_anomalies_flagged", "rows flagged as anomalies", ["model"], registry=self.registry
        )
        self.batch_rows = Histogram(
            "aecli_batch_rows",
            "rows per model call (gathered across concurrent requests)",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=self.registry,
        )
        self.reloads = Counter(
            "aecli_reloads", "reloads of a served run (SIGHUP, /admin/reload)", ["model", "result"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_Live(models))

    def answered(self, route: str, status: int, seconds: float) -> None:
        route = route if route in ROUTES else "other"  # (arbitrary paths must not grow the label set)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def scored(self, model: str, scores: np.ndarray, flagged: np.ndarray) -> None:
        self.rows.labels(model, "score").inc(len(scores))
        self.flagged.labels(model).inc(int(np.count_nonzero(flagged)))
        self.models[model].recent.extend(zip(scores.tolist(), flagged.tolist(), strict=True))


class _Live(Collector):
    """What is read at scrape time: the queues, the model calls, the recent score distributions."""

    def __init__(self, models: dict[str, ModelGauges]) -> None:
        self.models = models

    def collect(self) -> Iterator[Any]:
        queue = GaugeMetricFamily("aecli_queue_depth", "requests waiting for a model call", labels=["model"])
        calls = GaugeMetricFamily("aecli_model_calls", "model calls made since the start", labels=["model"])
        quantiles = GaugeMetricFamily(
            "aecli_score_recent", f"quantiles of the last {SCORE_WINDOW:,} scores", labels=["model", "quantile"]
        )
        rate = GaugeMetricFamily(
            "aecli_alert_rate_recent", f"share of the last {SCORE_WINDOW:,} scores flagged", labels=["model"]
        )
        expected = GaugeMetricFamily(
            "aecli_alert_rate_expected",
            "share of normal rows the calibrated threshold flags (thresholds.json)",
            labels=["model"],
        )
        for name, model in self.models.items():
            queue.add_metric([name], model.queue_depth())
            calls.add_metric([name], model.calls())
            recent = list(model.recent)
            if recent:
                scores = np.array([score for score, _ in recent], np.float64)
                finite = scores[np.isfinite(scores)]
                for q in QUANTILES if len(finite) else ():
                    quantiles.add_metric([name, str(q)], float(np.quantile(finite, q)))
                rate.add_metric([name], sum(flag for _, flag in recent) / len(recent))
            if (expected_rate := model.expected_alert_rate()) is not None:
                expected.add_metric([name], expected_rate)
        yield from (queue, calls, quantiles, rate, expected)
