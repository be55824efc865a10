"""`aecli serve`: a trained run as an HTTP scoring service (FastAPI under uvicorn).

POST /score, /embed and /reconstruct take rows as JSON (`{"instances": [...]}` or a bare list;
each row a list of numbers, flat or in the sample's shape, or an object keyed by feature name)
or as CSV (Content-Type text/csv, with or without a header). Rows from concurrent requests are
gathered into one model call (up to --max-batch rows, waiting at most --max-wait-ms for more),
which is what lets one process answer many small requests. Every model call has the same shape
(CALL_ROWS rows, padded), so a row's score never depends on the rows it was batched with. Bad
requests are 4xx with the reason: 422 for rows that do not fit the run, 413 past the size limit,
415 for another body type. Several runs may be served, each under a name (`named_runs`): the
name is only ever a key of the service's table, never a path. SIGTERM stops accepting
connections and lets requests in flight finish.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli import __version__
from aecli.backend import select_backend
from aecli.calibration import InUse, active_threshold, threshold_in_use
from aecli.code_scores import CodeSpace, code_space_of
from aecli.data.arrays import fit_to_model
from aecli.data.features import feature_positions
from aecli.errors import ConfigError, DataError
from aecli.evaluation import CALL_ROWS, predict_fixed
from aecli.scoring import CodeScorer, Columns, checked_rows, csv_chunks, element_names, score_rows, top_contributions
from aecli.trained_run import TrainedRun, load_model, open_trained_run, refuse_text_run

KINDS = ("score", "embed", "reconstruct")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # what a served run may be called (a URL segment)


@dataclass
class ServeRequest:
    runs: dict[str, Path]  # name -> run folder (named_runs); the first also answers /score, /embed, ...
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the one chosen is announced)
    max_batch: int = 256  # rows per model call, gathered across requests
    max_wait_ms: float = 5.0  # how long a batch waits for more rows
    max_request_mb: float = 10.0
    score: str | None = None
    threshold: str | None = None
    backend: str | None = None
    access_log: bool = False
    api_key_file: Path | None = None  # else $AECLI_API_KEY (service_guard.load_api_keys)
    api_keys: tuple[str, ...] = ()  # the keys read from there; none: the service is open
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    insecure: bool = False  # serve beyond loopback without keys and TLS (service_guard.check_exposure)
    max_concurrent: int = 64  # requests in flight beyond /health; more are answered 503 with Retry-After
    max_queued_rows: int = 65_536  # rows waiting for a model call, per model; a request past it is answered 503
    timeout_keep_alive: int = 5  # seconds an idle keep-alive connection is held
    timeout_request: float = 30.0  # seconds a request's headers and body may take to arrive


class BadRequest(Exception):
    """A request the service refuses, with its HTTP status and the reason (and headers to send)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.headers = status, headers


@dataclass
class Detector:
    """The run's models and threshold, and what one model call computes for a batch of scaled rows."""

    run: TrainedRun
    model: Any
    encoder: Any
    in_use: InUse
    code_space: CodeSpace | None = None  # the training codes, for a knn or combined score
    calls: int = 0  # model calls made (batches), for /metadata
    expected_alert_rate: float | None = None  # thresholds.json's expected false-positive rate, for /metrics

    def compute(self, kind: str, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        if kind == "embed":
            codes = predict_fixed(self.encoder, x, CALL_ROWS)
            return {"embedding": codes.reshape(len(x), -1)}
        x_hat = predict_fixed(self.model, x, CALL_ROWS)
        if kind == "reconstruct":
            return {"reconstruction": self.run.scaling.invert(x_hat.astype(np.float64))}
        code_scorer = None
        if self.code_space is not None:
            code_scorer = CodeScorer(lambda rows: predict_fixed(self.encoder, rows, CALL_ROWS), self.code_space)
        scores, flagged, residual = score_rows(x, x_hat, self.in_use.score, self.in_use.value, code_scorer)
        return {"score": scores, "anomalous": flagged, "residual": residual}


@dataclass
class _Pending:
    kind: str
    x: np.ndarray
    done: asyncio.Future[tuple[dict[str, np.ndarray], Detector]]


@dataclass
class Batcher:
    """Gathers rows of concurrent requests of one kind into one model call, run off the event loop."""

    detector: Detector
    max_rows: int
    max_wait_s: float
    queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    on_call: Callable[[int], None] | None = None  # told each model call's row count (/metrics)
    max_queued_rows: int | None = None  # rows submitted and not yet computed; past it, BadRequest 503
    queued_rows: int = 0

    async def submit(self, kind: str, x: np.ndarray) -> tuple[dict[str, np.ndarray], Detector]:
        """The rows' results, and the detector that computed them (a reload may swap it meanwhile)."""
        if self.max_queued_rows is not None and len(x) > self.max_queued_rows:
            raise BadRequest(413, f"{len(x):,} rows: over the limit of {self.max_queued_rows:,} rows waiting at once")
        if self.max_queued_rows is not None and self.queued_rows + len(x) > self.max_queued_rows:
            reason = f"over the limit of {self.max_queued_rows:,} rows waiting for the model; retry"
            raise BadRequest(503, reason, {"Retry-After": "1"})
        done: asyncio.Future[tuple[dict[str, np.ndarray], Detector]] = asyncio.get_running_loop().create_future()
        self.queued_rows += len(x)
        try:
            await self.queue.put(_Pending(kind, x, done))
            return await done
        finally:
            self.queued_rows -= len(x)

    async def run(self) -> None:
        while True:
            batch = await self._gather(await self.queue.get())
            for kind in KINDS:
                group = [item for item in batch if item.kind == kind]
                if group:
                    await self._compute(kind, group)

    async def _gather(self, first: _Pending) -> list[_Pending]:
        batch, rows = [first], len(first.x)
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            try:  # what is already queued joins at once; then wait out the rest of the window
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            batch.append(item)
            rows += len(item.x)
        return batch

    async def _compute(self, kind: str, group: list[_Pending]) -> None:
        x = group[0].x if len(group) == 1 else np.concatenate([item.x for item in group])
        if self.on_call is not None:
            self.on_call(len(x))
        detector = self.detector
        try:
            result = await asyncio.to_thread(detector.compute, kind, x)
        except Exception as exc:  # a bug: every request in the batch answers 500, the service goes on
            for item in group:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        start = 0
        for item in group:
            end = start + len(item.x)
            if not item.done.done():  # (a client that went away)
                item.done.set_result(({name: values[start:end] for name, values in result.items()}, detector))
            start = end


@dataclass
class Rows:
    """A request's rows, scaled for the model, with their ids and the names of their elements."""

    x: np.ndarray
    ids: list[str] | None
    names: list[str]


def parse_rows(body: bytes, content_type: str, run: TrainedRun) -> Rows:
    """A request body as rows for the model; anything that does not fit is a BadRequest."""
    media = content_type.split(";")[0].strip().lower()
    try:
        if media in ("text/csv", "application/csv"):
            rows = _csv_rows(body, run)
        elif media in ("application/json", "", "application/x-www-form-urlencoded"):  # (curl -d sends the last)
            rows = _json_rows(body, run)
        else:
            raise BadRequest(415, f"Content-Type {media}: send application/json or text/csv")
        x = fit_to_model(checked_rows(rows.x, "request"), run.sample_shape, run.scaling, "request")
        return Rows(x, rows.ids, rows.names)
    except DataError as exc:
        raise BadRequest(422, str(exc)) from None


def _csv_rows(body: bytes, run: TrainedRun) -> Rows:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"request: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    own = run.config.data
    columns = Columns(own.id_column, own.label_column, features=run.feature_names)
    names, chunks = csv_chunks(io.StringIO(text), "request", columns)
    parts = list(chunks)
    x = np.concatenate([part.x for part in parts])
    ids = [i for part in parts for i in part.ids or []] if parts[0].ids is not None else None
    return Rows(x, ids, element_names(run.sample_shape, names))


def _json_rows(body: bytes, run: TrainedRun) -> Rows:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"request: not JSON ({exc})") from None
    except RecursionError:  # (nested deeper than any row can be)
        raise DataError("request: JSON nested too deeply") from None
    instances = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(instances, list) or not instances:
        raise DataError('request: expected {"instances": [row, ...]} (or a list of rows) with at least one row')
    ids, names = None, element_names(run.sample_shape, None)
    if isinstance(instances[0], dict):
        own = run.config.data
        instances, ids, features = _object_rows(instances, own.id_column, own.label_column, run.feature_names)
        names = element_names(run.sample_shape, features)
    if not _all_numbers(instances):  # JSON true/false, strings and nulls are not numbers
        raise DataError("request: every row must be a list of numbers (or an object of them)")
    try:
        x = np.asarray(instances, dtype=np.float64)
    except ValueError:
        raise DataError("request: rows of different lengths or shapes") from None
    except OverflowError:
        raise DataError("request: a number is beyond float64's range (about ±1.8e308)") from None
    allowed = _row_shapes(run.sample_shape)
    if x.ndim < 2 or x.shape[1:] not in allowed:
        shown = " or ".join(str(shape) for shape in allowed)
        raise DataError(f"request: each row must have the shape {shown} (the model expects {run.sample_shape})")
    return Rows(x, ids, names)


def _all_numbers(value: Any) -> bool:
    """Every leaf of nested lists is a JSON number (bool is an int subclass: refused)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is list:
            pending.extend(item)
        elif type(item) is not float and type(item) is not int:
            return False
    return True


def _row_shapes(sample_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """What one row may look like: flat, the sample's shape, or that shape without a trailing channel of 1."""
    shapes = [(math.prod(sample_shape),), tuple(sample_shape)]
    if len(sample_shape) > 1 and sample_shape[-1] == 1:
        shapes.append(tuple(sample_shape[:-1]))
    return list(dict.fromkeys(shapes))


def _object_rows(
    instances: list[Any], id_column: str | int | None, label_column: str | int | None, expected: list[str] | None
) -> tuple[list[list[Any]], list[str] | None, list[str]]:
    """Rows given as objects: the first one's keys (less the id and label columns) are the
    features, taken in the run's order when it recorded feature names (else the first row's
    order), and every row has the same keys."""
    keys = list(instances[0])
    features = [key for key in keys if key not in (id_column, label_column)]
    order = feature_positions(features, expected, "request")
    features = features if order is None else [features[i] for i in order]
    rows, ids = [], []
    for number, row in enumerate(instances, start=1):
        if not isinstance(row, dict) or set(row) != set(keys):
            raise DataError(f"request: row {number} does not have the first row's keys")
        rows.append([row[key] for key in features])
        if id_column in row:
            ids.append(str(row[id_column]))
    return rows, (ids or None), features


def model_summary(detector: Detector) -> dict[str, Any]:
    """What a served model is: its run, kind, input and threshold in use (/models, /metadata)."""
    run = detector.run
    return {
        "run": run.path.name,
        "model_kind": run.config.model.kind,
        "input_shape": list(run.sample_shape),
        "input_elements": math.prod(run.sample_shape),
        "threshold": {"score": detector.in_use.score, "value": detector.in_use.value, "method": detector.in_use.method},
    }


def metadata(detector: Detector, request: ServeRequest) -> dict[str, Any]:
    import keras

    run = detector.run
    return {
        **model_summary(detector),
        "scaling": run.scaling.kind,
        "batching": {"max_rows": request.max_batch, "max_wait_ms": request.max_wait_ms},
        "max_request_bytes": int(request.max_request_mb * 2**20),
        "max_concurrent": request.max_concurrent,
        "max_queued_rows": request.max_queued_rows,
        "timeouts": {"keep_alive": request.timeout_keep_alive, "request": request.timeout_request},
        "api_keys_required": bool(request.api_keys),
        "model_calls": detector.calls,
        "versions": {"aecli": __version__, "keras": keras.__version__, "backend": keras.backend.backend()},
    }


def named_runs(run_dirs: Sequence[Path], names: Sequence[str]) -> dict[str, Path]:
    """The served runs by name, in the order given: `--name NAME=RUN` names one of them, else a run
    is called by its folder's name. Names are URL segments (MODEL_NAME) and unique."""
    by_folder = {run.resolve(): run for run in run_dirs}
    chosen: dict[Path, str] = {}
    for item in names:
        name, sep, folder = item.partition("=")
        resolved = Path(folder).resolve()
        if not sep or resolved not in by_folder:
            raise ConfigError(f"--name {item!r}: expected NAME=RUN with RUN one of the runs to serve")
        chosen[resolved] = name
    runs: dict[str, Path] = {}
    for resolved, run in by_folder.items():
        name = chosen.get(resolved, run.name)
        if not MODEL_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} cannot name a model: letters, digits, '.', '_', '-' (64 at most); use --name")
        if name in runs:
            raise ConfigError(f"two runs would be called {name!r}; name them with --name NAME=RUN")
        runs[name] = run
    return runs


def open_detector(request: ServeRequest, run_dir: Path) -> Detector:
    run = open_trained_run(run_dir)
    refuse_text_run(run, "serve")
    in_use = threshold_in_use(run.path, run.metrics, request.score, request.threshold)
    calibrated = None if request.threshold else active_threshold(run.path, in_use.score)
    expected = None if calibrated is None else calibrated.get("expected_false_positive_rate")
    select_backend(request.backend or run.config.runtime.backend)
    model = load_model(run.path / "model.keras", compile=False)
    encoder = load_model(run.path / "encoder.keras", compile=False)
    detector = Detector(run, model, encoder, in_use, code_space_of(run.path, in_use.score))
    detector.expected_alert_rate = None if expected is None else float(expected)
    return detector


def row_ids(rows: Rows) -> list[str] | list[int]:
    """Each row's id column value, or its position in the request (as /score numbers them)."""
    return rows.ids if rows.ids else list(range(len(rows.x)))


def score_results(rows: Rows, result: dict[str, np.ndarray], top_k: int) -> list[dict[str, Any]]:
    """Per row: its id (or position), score, flag, and the top-k elements by squared residual."""
    top = top_contributions(result["residual"], rows.names, top_k)
    ids = row_ids(rows)
    return [
        {
            "id": ids[i],
            "score": float(result["score"][i]),
            "anomalous": bool(result["anomalous"][i]),
            "top": [{"element": name, "squared_residual": value} for name, value in top[i]],
        }
        for i in range(len(rows.x))
    ]
