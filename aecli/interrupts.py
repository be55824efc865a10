"""SIGTERM handling shared by the CLI (which installs it) and the training loop (which obeys it).

The handler raises at once, like Ctrl-C; it also leaves a flag that the training loop checks
after every step, because an exception raised while TensorFlow is inside native code can be
swallowed there.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the run is marked interrupted; exits 143 instead of 130."""


_requested = False


def termination_requested() -> bool:
    return _requested


def _on_sigterm(signum: int, frame: Any) -> None:
    global _requested
    _requested = True
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    global _requested
    _requested = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
