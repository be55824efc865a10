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
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aecli import __version__
from aecli.errors import AecliError
from aecli.service_guard import OPEN_PATHS, authorized
from aecli.service_metrics import ModelGauges, ServiceMetrics
from aecli.serving import (
    BadRequest,
    Batcher,
    Detector,
    ServeRequest,
    metadata,
    model_summary,
    open_detector,
    parse_rows,
    row_ids,
    score_results,
)

RETRY_AFTER_SECONDS = 1  # what a 503 over the limit of requests in flight asks the client to wait
UNREAD_BODY_BYTES = 2**16  # a refused request's body past this size ends the connection instead of being read
TOP_K = Query(3, ge=0, le=1000)  # /score's ?top_k=: the elements with the largest residuals per row


@dataclass
class Counter:
    answered: int = 0
    in_flight: int = 0  # requests past the guard, /health aside
    ready: bool = False  # the batchers run: /health/ready answers 200


def create_app(detectors: dict[str, Detector], request: ServeRequest) -> tuple[FastAPI, Counter]:
    """The service over one detector per served run, by name; the first also answers /score,
    /embed, /reconstruct and /metadata, every one at /models/NAME/..."""
    wait_s = request.max_wait_ms / 1000
    batchers = {
        name: Batcher(detector, request.max_batch, wait_s, max_queued_rows=request.max_queued_rows)
        for name, detector in detectors.items()
    }
    counter = Counter()
    metrics = ServiceMetrics({name: _gauges(batcher) for name, batcher in batchers.items()})
    for name, batcher in batchers.items():
        batcher.on_call = metrics.batch_rows.labels(name).observe
    reload = _reloader(batchers, request, metrics)
    app = FastAPI(title="aecli detector", version=__version__, lifespan=_lifespan(batchers, counter, reload))
    app.add_middleware(_Guard, request=request, counter=counter, metrics=metrics)

    @app.exception_handler(BadRequest)
    async def refused(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)

    _health_routes(app, counter, metrics)
    _admin_routes(app, request, counter, reload)
    _model_routes(app, batchers, request, counter, metrics)
    _describe_routes(app, batchers, request, counter)
    return app, counter


def _model_routes(
    app: FastAPI, batchers: dict[str, Batcher], request: ServeRequest, counter: Counter, metrics: ServiceMetrics
) -> None:
    """/score, /embed, /reconstruct (the first model), and the same under /models/NAME/."""
    default, limit = next(iter(batchers)), int(request.max_request_mb * 2**20)

    async def rows_of(http: Request, batcher: Batcher) -> Any:
        return parse_rows(await _body(http, limit), http.headers.get("content-type", ""), batcher.detector.run)

    async def score(name: str, http: Request, top_k: int) -> dict[str, Any]:
        batcher = _served(batchers, name)
        rows = await rows_of(http, batcher)
        result, served_by = await batcher.submit("score", rows.x)
        metrics.scored(name, result["score"], result["anomalous"])
        counter.answered += 1
        chosen = served_by.in_use
        threshold = {"score": chosen.score, "value": chosen.value, "method": chosen.method}
        return {"model": name, "threshold": threshold, "results": score_results(rows, result, top_k)}

    async def transform(name: str, http: Request, verb: str, field: str, key: str) -> dict[str, Any]:
        batcher = _served(batchers, name)
        rows = await rows_of(http, batcher)
        result, _ = await batcher.submit(verb, rows.x)
        metrics.rows.labels(name, verb).inc(len(rows.x))
        counter.answered += 1
        return {"model": name, "ids": row_ids(rows), key: result[field].tolist()}

    @app.post("/score")
    async def default_score(http: Request, top_k: int = TOP_K) -> dict[str, Any]:
        return await score(default, http, top_k)

    @app.post("/models/{name}/score")
    async def named_score(name: str, http: Request, top_k: int = TOP_K) -> dict[str, Any]:
        return await score(name, http, top_k)

    def transform_routes(verb: str, field: str, key: str) -> None:  # /embed and /reconstruct, and by name
        async def of_default(http: Request) -> dict[str, Any]:
            return await transform(default, http, verb, field, key)

        async def of_named(name: str, http: Request) -> dict[str, Any]:
            return await transform(name, http, verb, field, key)

        app.add_api_route(f"/{verb}", of_default, methods=["POST"], name=verb)
        app.add_api_route(f"/models/{{name}}/{verb}", of_named, methods=["POST"], name=f"named_{verb}")

    transform_routes("embed", "embedding", "embeddings")
    transform_routes("reconstruct", "reconstruction", "reconstructions")


def _describe_routes(app: FastAPI, batchers: dict[str, Batcher], request: ServeRequest, counter: Counter) -> None:
    """/metadata (the first model), /models/NAME/metadata, and /models, the list."""
    default = next(iter(batchers))

    async def describe(name: str) -> dict[str, Any]:
        counter.answered += 1
        return {"model": name, **metadata(_served(batchers, name).detector, request)}

    @app.get("/metadata")
    async def default_metadata() -> dict[str, Any]:
        return await describe(default)

    @app.get("/models/{name}/metadata")
    async def named_metadata(name: str) -> dict[str, Any]:
        return await describe(name)

    @app.get("/models")
    async def listing() -> dict[str, Any]:
        counter.answered += 1
        return {"default": default, "models": {name: model_summary(b.detector) for name, b in batchers.items()}}


def _served(batchers: dict[str, Batcher], name: str) -> Batcher:
    if name not in batchers:  # (the name is only ever looked up here: it never reaches a path)
        raise BadRequest(404, "no model of that name here; GET /models lists them")
    return batchers[name]


def _gauges(batcher: Batcher) -> ModelGauges:
    return ModelGauges(
        lambda: batcher.detector.expected_alert_rate, batcher.queue.qsize, lambda: batcher.detector.calls
    )


class _Guard:
    """Before every route: the API key (401), the limit on requests in flight (503); after it,
    /metrics counts and times the answer, and --access-log writes it. A plain ASGI middleware:
    Starlette's BaseHTTPMiddleware (`@app.middleware`) costs more than the model call here
    (measured: 427 against 908 requests/s on bench_serve's batched load)."""

    def __init__(self, app: ASGIApp, request: ServeRequest, counter: Counter, metrics: ServiceMetrics) -> None:
        self.app, self.request, self.counter, self.metrics = app, request, counter, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, path, headers = time.perf_counter(), scope["path"], Headers(scope=scope)
        status = 500  # (what ServerErrorMiddleware answers, should a route raise)

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400 and _may_leave_a_large_body_unread(headers):
                    # else uvicorn reads the rest of it, however long, to keep the connection alive
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        guarded = path not in OPEN_PATHS  # /health and its kin: no key, not counted in flight
        try:
            if guarded and not authorized(headers.get("authorization"), self.request.api_keys):
                refusal = _refusal(401, "missing or wrong API key (Authorization: Bearer KEY)")
                refusal.headers["WWW-Authenticate"] = "Bearer"
                await refusal(scope, receive, answer)
            elif guarded and self.counter.in_flight >= self.request.max_concurrent:
                refusal = _refusal(503, f"over the limit of {self.request.max_concurrent} requests in flight; retry")
                refusal.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
                await refusal(scope, receive, answer)
            else:
                self.counter.in_flight += guarded
                try:
                    await self.app(scope, receive, answer)
                finally:
                    self.counter.in_flight -= guarded
        finally:
            seconds = time.perf_counter() - started
            self.metrics.answered(_route(path), status, seconds)
            if self.request.access_log:
                _log_access(scope, status, seconds)


def _may_leave_a_large_body_unread(headers: Headers) -> bool:
    """Whether a refused request may still be sending a body worth not reading: chunked, or
    declared longer than UNREAD_BODY_BYTES (a refusal answers before the body is read whole)."""
    declared = headers.get("content-length")
    chunked = "transfer-encoding" in headers
    return chunked or (declared is not None and (not declared.isdigit() or int(declared) > UNREAD_BODY_BYTES))


def _route(path: str) -> str:
    """The route a path asks for, as /metrics labels it: /models/NAME/score is /models/{name}/score."""
    parts = path.split("/")
    return f"/models/{{name}}/{parts[3]}" if len(parts) == 4 and parts[1] == "models" else path


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    """One JSON line per request on stderr (--access-log), for a log shipper to parse."""
    client = scope.get("client")
    line = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "client": client[0] if client else None,
        "method": scope["method"],
        "path": scope["path"],
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
    batchers: dict[str, Batcher], counter: Counter, reload: Callable[[], Awaitable[tuple[bool, str]]]
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The batchers run while the service does; SIGHUP reloads the runs."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(batcher.run()) for batcher in batchers.values()]
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # (no SIGHUP off Unix's main thread)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
        counter.ready = True
        yield  # (uvicorn lets requests in flight finish before it ends the lifespan)
        counter.ready = False
        for task in tasks:
            task.cancel()

    return lifespan


def _reloader(
    batchers: dict[str, Batcher], request: ServeRequest, metrics: ServiceMetrics
) -> Callable[[], Awaitable[tuple[bool, str]]]:
    """What SIGHUP and POST /admin/reload do: read each run again (its thresholds.json, and its
    model files if it was retrained in place) and swap it in between two model calls; a run that
    no longer reads keeps its previous one serving. Returns whether every run reloaded, and what
    happened in one line (also on stderr)."""

    async def reload() -> tuple[bool, str]:
        lines, failed = [], False
        for name, batcher in batchers.items():
            try:
                fresh = await asyncio.to_thread(open_detector, request, request.runs[name])
            except AecliError as exc:
                failed = True
                metrics.reloads.labels(name, "failed").inc()
                lines.append(f"{name}: reload failed, still serving the previous model and threshold: {exc}")
                continue
            fresh.calls = batcher.detector.calls
            batcher.detector = fresh  # (the model call in progress finishes on the previous one)
            metrics.reloads.labels(name, "ok").inc()
            chosen = fresh.in_use
            lines.append(f"{name}: reloaded, threshold {chosen.score} {chosen.value:.6g} ({chosen.method})")
        line = "; ".join(lines)
        print(line, file=sys.stderr, flush=True)
        return not failed, line

    return reload


def _admin_routes(
    app: FastAPI, request: ServeRequest, counter: Counter, reload: Callable[[], Awaitable[tuple[bool, str]]]
) -> None:
    @app.post("/admin/reload")
    async def admin_reload() -> Response:
        counter.answered += 1
        if not request.api_keys:  # (the guard has checked the key; without keys anyone could)
            return _refusal(403, "/admin/reload needs the service started with API keys; or send it SIGHUP")
        reloaded, line = await reload()
        return JSONResponse({"detail": line}, 200 if reloaded else 409)


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
