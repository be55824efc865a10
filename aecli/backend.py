"""Importing TensorFlow quietly, once, only by the commands that train or load models."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Import TensorFlow with its C++ start-up banner (oneDNN, CPU flags, CUDA probing) silenced.

    Those lines are written to file descriptor 2 before TensorFlow's log level applies, so
    the descriptor itself is pointed at /dev/null for the duration of the import. Python
    exceptions raised by the import are unaffected.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow

        # The first device query probes CUDA and logs its absence; do it while still silenced.
        tensorflow.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow
