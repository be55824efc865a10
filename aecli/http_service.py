"""The HTTP side of `aecli serve`: FastAPI routes over serving.py's detector and batcher, behind
a guard (service_guard.py: API keys, the limit on requests in flight) that also times every
answer for /metrics (service_metrics.py)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from aecli.errors import AecliError
from aecli.service_guard import OPEN_PATHS, authorized
from aecli.service_metrics import ServiceMetrics
from aecli.serving import (
    BadRequest,
    Batcher,
    Detector,
    ServeRequest,
    metadata,
    open_detector,
    parse_rows,
    row_ids,
    score_results,
)

RETRY_AFTER_SECONDS = 1  # what a 503 over the limit of requests in flight asks the client to wait


@dataclass
class Counter:
    answered: int = 0
    in_flight: int = 0  # requests past the guard, /health aside
    ready: bool = False  # the batcher runs: /health/ready answers 200


def create_app(detector: Detector, request: ServeRequest) -> tuple[FastAPI, Counter]:
    batcher = Batcher(detector, request.max_batch, request.max_wait_ms / 1000)
    limit = int(request.max_request_mb * 2**20)
    counter = Counter()
    metrics = ServiceMetrics(
        lambda: batcher.detector.expected_alert_rate, batcher.queue.qsize, lambda: batcher.detector.calls
    )
    batcher.on_call = metrics.batch_rows.observe
    reload = _reloader(batcher, request, metrics)

    lifespan = _lifespan(batcher, counter, reload)
    app = FastAPI(title="aecli detector", version=detector.run.path.name, lifespan=lifespan)

    _guard(app, request, counter, metrics)

    @app.exception_handler(BadRequest)
    async def refused(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    async def rows_of(http: Request) -> Any:
        return parse_rows(await _body(http, limit), http.headers.get("content-type", ""), batcher.detector.run)

    _health_routes(app, counter, metrics)
    _admin_routes(app, request, counter, reload)

    @app.get("/metadata")
    async def describe() -> dict[str, Any]:
        counter.answered += 1
        return metadata(batcher.detector, request)

    @app.post("/score")
    async def score(http: Request, top_k: int = Query(3, ge=0, le=1000)) -> dict[str, Any]:
        rows = await rows_of(http)
        result, served_by = await batcher.submit("score", rows.x)
        metrics.scored(result["score"], result["anomalous"])
        counter.answered += 1
        chosen = served_by.in_use
        threshold = {"score": chosen.score, "value": chosen.value, "method": chosen.method}
        return {"threshold": threshold, "results": score_results(rows, result, top_k)}

    @app.post("/embed")
    async def embed(http: Request) -> dict[str, Any]:
        rows = await rows_of(http)
        result, _ = await batcher.submit("embed", rows.x)
        metrics.rows.labels("/embed").inc(len(rows.x))
        counter.answered += 1
        return {"ids": row_ids(rows), "embeddings": result["embedding"].tolist()}

    @app.post("/reconstruct")
    async def reconstruct(http: Request) -> dict[str, Any]:
        rows = await rows_of(http)
        result, _ = await batcher.submit("reconstruct", rows.x)
        metrics.rows.labels("/reconstruct").inc(len(rows.x))
        counter.answered += 1
        return {"ids": row_ids(rows), "reconstructions": result["reconstruction"].tolist()}

    return app, counter


def _guard(app: FastAPI, request: ServeRequest, counter: Counter, metrics: ServiceMetrics) -> None:
    """Before every route: the API key (401), the limit on requests in flight (503); after it, /metrics
    counts and times the answer."""

    @app.middleware("http")
    async def guard(http: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started, path = time.perf_counter(), http.url.path
        guarded = path not in OPEN_PATHS  # /health and its kin: no key, not counted in flight
        if guarded and not authorized(http.headers.get("authorization"), request.api_keys):
            response: Response = _refusal(401, "missing or wrong API key (Authorization: Bearer KEY)")
            response.headers["WWW-Authenticate"] = "Bearer"
        elif guarded and counter.in_flight >= request.max_concurrent:
            response = _refusal(503, f"over the limit of {request.max_concurrent} requests in flight; retry")
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        else:
            counter.in_flight += 1 if guarded else 0
            try:
                response = await call_next(http)
            finally:
                counter.in_flight -= 1 if guarded else 0
        seconds = time.perf_counter() - started
        metrics.answered(path, response.status_code, seconds)
        if request.access_log:
            _log_access(http, response.status_code, seconds)
        return response


def _log_access(http: Request, status: int, seconds: float) -> None:
    """One JSON line per request on stderr (--access-log), for a log shipper to parse."""
    client = http.client.host if http.client else None
    line = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "client": client,
        "method": http.method,
        "path": http.url.path,
        "status": status,
        "seconds": round(seconds, 6),
    }
    print(json.dumps(line), file=sys.stderr, flush=True)


def _health_routes(app: FastAPI, counter: Counter, metrics: ServiceMetrics) -> None:
    """/health and /health/live (the process answers), /health/ready (the model serves), /metrics."""

    @app.get("/health")
    @app.get("/health/live")
    async def health() -> dict[str, str]:
        counter.answered += 1
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> Response:
        counter.answered += 1
        return JSONResponse({"status": "ready" if counter.ready else "starting"}, 200 if counter.ready else 503)

    @app.get("/metrics")
    async def exposition() -> Response:
        counter.answered += 1
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _lifespan(
    batcher: Batcher, counter: Counter, reload: Callable[[], Awaitable[str]]
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The batcher runs while the service does; SIGHUP reloads the run."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # (no SIGHUP off Unix's main thread)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
        counter.ready = True
        yield  # (uvicorn lets requests in flight finish before it ends the lifespan)
        counter.ready = False
        task.cancel()

    return lifespan


def _reloader(batcher: Batcher, request: ServeRequest, metrics: ServiceMetrics) -> Callable[[], Awaitable[str]]:
    """What SIGHUP and POST /admin/reload do: read the run again (its thresholds.json, and its model
    files if it was retrained in place) and swap it in between two model calls; a run that no longer
    reads keeps the previous one serving. Returns what happened, in one line (also on stderr)."""

    async def reload() -> str:
        try:
            fresh = await asyncio.to_thread(open_detector, request)
        except AecliError as exc:
            metrics.reloads.labels("failed").inc()
            line = f"reload failed, still serving the previous model and threshold: {exc}"
        else:
            fresh.calls = batcher.detector.calls
            batcher.detector = fresh  # (the model call in progress finishes on the previous one)
            metrics.reloads.labels("ok").inc()
            chosen = fresh.in_use
            line = f"reloaded {fresh.run.path.name}: threshold {chosen.score} {chosen.value:.6g} ({chosen.method})"
        print(line, file=sys.stderr, flush=True)
        return line

    return reload


def _admin_routes(app: FastAPI, request: ServeRequest, counter: Counter, reload: Callable[[], Awaitable[str]]) -> None:
    @app.post("/admin/reload")
    async def admin_reload() -> Response:
        counter.answered += 1
        if not request.api_keys:  # (the guard has checked the key; without keys anyone could)
            return _refusal(403, "/admin/reload needs the service started with API keys; or send it SIGHUP")
        line = await reload()
        return JSONResponse({"detail": line}, 200 if line.startswith("reloaded") else 409)


def _refusal(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"detail": reason}, status_code=status)


async def _body(http: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (whatever
    Content-Length claims, a chunked body is counted as it arrives)."""
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}")
    parts, size = [], 0
    try:
        async for part in http.stream():
            size += len(part)
            if size > limit:
                raise BadRequest(413, f"request body over the limit of {limit:,} bytes")
            parts.append(part)
    except ClientDisconnect:  # gone, or dropped at --timeout-request: nobody reads the answer
        raise BadRequest(408, "the connection closed before the request body arrived whole") from None
    return b"".join(parts)
