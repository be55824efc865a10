"""Ctrl-C and SIGTERM handling shared by the CLI (which installs it) and the training loop (which obeys it).

Each handler raises at once; it also leaves a flag that the training loop checks after every
step, because an exception raised while TensorFlow is inside native code (or a finalizer) can
be swallowed there, and training would then carry on to the end.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the run is marked interrupted; exits 143 instead of 130."""


_pending: type[KeyboardInterrupt] | None = None
_deferring = 0  # > 0 inside deferred_interrupts(): the handlers only leave the flag


def pending_interrupt() -> type[KeyboardInterrupt] | None:
    """The interrupt received since the handlers were installed, if any."""
    return _pending


def raise_pending() -> None:
    """Raise the interrupt received since the handlers were installed, if any: called where a
    command's results are about to be moved into place, so that an interrupt whose exception
    native code swallowed (TensorFlow, XLA's finalizers print "Exception ignored in ...") still
    stops the command with nothing written."""
    if _pending is not None and not _deferring:
        raise _pending


def _on_sigint(signum: int, frame: Any) -> None:
    global _pending
    _pending = KeyboardInterrupt
    if not _deferring:
        raise KeyboardInterrupt


def _on_sigterm(signum: int, frame: Any) -> None:
    global _pending
    _pending = Terminated
    if not _deferring:
        raise Terminated


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then raise: for work that must not stop
    half way, such as writing a checkpoint (Keras's saver, h5py and zipfile mid-write)."""
    global _deferring
    before = _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and before is None and _pending is not None:
        raise _pending


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    global _pending
    _pending = None
    handlers = {signal.SIGINT: _on_sigint, signal.SIGTERM: _on_sigterm}
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        del handlers[signal.SIGINT]  # started in the background by a shell: Ctrl-C is not meant for us
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        _pending = None  # handled by whoever caught the exception; later trainings start clean
        for sig, handler in previous.items():
            signal.signal(sig, handler)
