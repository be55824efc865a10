"""`aecli serve`: the run's HTTP service (http_service.py) under uvicorn, on a socket bound
first, so that a taken port is a one-line error and port 0 picks a free one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aecli.errors import ConfigError, RunError
from aecli.http_service import create_app
from aecli.service_guard import Exposure, check_exposure, check_tls, load_api_keys
from aecli.serving import ServeRequest, named_runs, open_detector

__all__ = ["ServeRequest", "named_runs", "serve"]

GRACE_SECONDS = 30  # how long requests in flight may take to finish after SIGTERM


class _Server(uvicorn.Server):
    """uvicorn's server, except that after a graceful stop on SIGTERM/SIGINT it returns (so the
    command can say what it served and exit 0) instead of re-raising the signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _RequestDeadline(HttpToolsProtocol):
    """uvicorn's HTTP protocol (httptools), with a deadline for each request to arrive whole: from
    the connection's start, or a request's first byte, to the end of its body. uvicorn has none,
    so a client that sends nothing, or trickles its headers or body, would hold a connection
    forever (measured: still open after 20 s); past the deadline the connection is dropped."""

    seconds = 30.0  # set per service (serve below)
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the service starts: a taken port is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the service accepts them
    except OSError as exc:
        sock.close()
        raise RunError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(request: ServeRequest, announce: Callable[[str, str | None, int], None]) -> int:
    """Run the service until SIGTERM or Ctrl-C; returns the number of requests answered.
    `announce` is told the URL, a warning when the service is exposed (check_exposure), and the
    number of API keys read."""
    if request.max_batch < 1 or request.max_wait_ms < 0 or request.max_request_mb <= 0:
        raise ConfigError("--max-batch must be >= 1, --max-wait-ms >= 0 and --max-request-mb > 0")
    if request.max_concurrent < 1 or request.max_queued_rows < 1:
        raise ConfigError("--max-concurrent and --max-queued-rows must be >= 1")
    if not request.timeout_keep_alive > 0 or not request.timeout_request > 0:
        raise ConfigError("--timeout-keep-alive and --timeout-request must be > 0")
    request = dataclasses.replace(request, api_keys=load_api_keys(request.api_key_file))
    check_tls(request.ssl_certfile, request.ssl_keyfile)
    tls = request.ssl_certfile is not None
    warning = check_exposure(Exposure(request.host, bool(request.api_keys), tls, request.insecure))
    sock = bind(request.host, request.port)  # first: a taken port fails before the model loads
    try:
        detectors = {name: open_detector(request, run_dir) for name, run_dir in request.runs.items()}
    except BaseException:
        sock.close()
        raise
    app, counter = create_app(detectors, request)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # (--access-log: http_service writes JSON lines instead)
        timeout_graceful_shutdown=GRACE_SECONDS,
        timeout_keep_alive=request.timeout_keep_alive,
        http=type("RequestDeadline", (_RequestDeadline,), {"seconds": request.timeout_request}),
        ssl_certfile=request.ssl_certfile,
        ssl_keyfile=request.ssl_keyfile,
    )
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    announce(url, warning, len(request.api_keys))
    _Server(config).run(sockets=[sock])
    return counter.answered
