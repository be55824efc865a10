"""`aecli serve`: the run's HTTP service (http_service.py) under uvicorn, on a socket bound
first, so that a taken port is a one-line error and port 0 picks a free one."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn

from aecli.errors import ConfigError, RunError
from aecli.http_service import create_app
from aecli.serving import ServeRequest, open_detector

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


def serve(request: ServeRequest, announce: Callable[[str], None]) -> int:
    """Run the service until SIGTERM or Ctrl-C; returns the number of requests answered."""
    if request.max_batch < 1 or request.max_wait_ms < 0 or request.max_request_mb <= 0:
        raise ConfigError("--max-batch must be >= 1, --max-wait-ms >= 0 and --max-request-mb > 0")
    sock = bind(request.host, request.port)  # first: a taken port fails before the model loads
    try:
        detector = open_detector(request)
    except BaseException:
        sock.close()
        raise
    app, counter = create_app(detector, request)
    config = uvicorn.Config(
        app, log_level="warning", access_log=request.access_log, timeout_graceful_shutdown=GRACE_SECONDS
    )
    host, port = sock.getsockname()[:2]
    announce(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    _Server(config).run(sockets=[sock])
    return counter.answered
