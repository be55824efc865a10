"""The HTTP side of `aecli serve`: FastAPI routes over serving.py's detector and batcher."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from aecli.serving import (
    BadRequest,
    Batcher,
    Detector,
    ServeRequest,
    metadata,
    parse_rows,
    row_ids,
    score_results,
)


@dataclass
class Counter:
    answered: int = 0


def create_app(detector: Detector, request: ServeRequest) -> tuple[FastAPI, Counter]:
    batcher = Batcher(detector, request.max_batch, request.max_wait_ms / 1000)
    limit = int(request.max_request_mb * 2**20)
    counter = Counter()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield  # (uvicorn lets requests in flight finish before it ends the lifespan)
        task.cancel()

    app = FastAPI(title="aecli detector", version=detector.run.path.name, lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def refused(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    async def rows_of(http: Request) -> Any:
        return parse_rows(await _body(http, limit), http.headers.get("content-type", ""), detector.run)

    @app.get("/health")
    async def health() -> dict[str, str]:
        counter.answered += 1
        return {"status": "ok"}

    @app.get("/metadata")
    async def describe() -> dict[str, Any]:
        counter.answered += 1
        return metadata(detector, request)

    @app.post("/score")
    async def score(http: Request, top_k: int = Query(3, ge=0, le=1000)) -> dict[str, Any]:
        rows = await rows_of(http)
        result = await batcher.submit("score", rows.x)
        counter.answered += 1
        chosen = detector.in_use
        threshold = {"score": chosen.score, "value": chosen.value, "method": chosen.method}
        return {"threshold": threshold, "results": score_results(rows, result, top_k)}

    @app.post("/embed")
    async def embed(http: Request) -> dict[str, Any]:
        rows = await rows_of(http)
        result = await batcher.submit("embed", rows.x)
        counter.answered += 1
        return {"ids": row_ids(rows), "embeddings": result["embedding"].tolist()}

    @app.post("/reconstruct")
    async def reconstruct(http: Request) -> dict[str, Any]:
        rows = await rows_of(http)
        result = await batcher.submit("reconstruct", rows.x)
        counter.answered += 1
        return {"ids": row_ids(rows), "reconstructions": result["reconstruction"].tolist()}

    return app, counter


async def _body(http: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (whatever
    Content-Length claims, a chunked body is counted as it arrives)."""
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}")
    parts, size = [], 0
    async for part in http.stream():
        size += len(part)
        if size > limit:
            raise BadRequest(413, f"request body over the limit of {limit:,} bytes")
        parts.append(part)
    return b"".join(parts)
