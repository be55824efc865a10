"""Choosing the Keras backend, and importing TensorFlow quietly, once, only when needed."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from types import ModuleType

from aecli.errors import ConfigError


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

        # tf.function's retracing warnings concern code aecli controls (a sweep builds a model
        # per cell); users see aecli's own messages, and TensorFlow's errors still raise.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        # The first device query probes CUDA and logs its absence; do it while still silenced,
        # except in a TF_CONFIG cluster: that query starts the runtime, and a multi-worker
        # strategy must be created before it starts (see distribute.py).
        if "TF_CONFIG" not in os.environ:
            tensorflow.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


BACKENDS = ("tensorflow", "jax", "torch")
INSTALL_HINTS = {
    "tensorflow": "pip install aecli (TensorFlow is a core dependency)",
    "jax": "pip install 'aecli[jax]'",
    "torch": "pip install 'aecli[torch]'",
}


def select_backend(name: str) -> None:
    """Make Keras run on `name`; must happen before Keras is first imported in this process."""
    if name not in BACKENDS:
        raise ConfigError(f"runtime.backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"runtime.backend {name}: {name} is not installed; {INSTALL_HINTS[name]}")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise ConfigError(
                f"runtime.backend {name}: Keras already runs on {current} in this process; start a new one"
            )
        return
    if name == "torch":
        _load_torch_before_tensorflow()
    os.environ["KERAS_BACKEND"] = name


def _load_torch_before_tensorflow() -> None:
    """TensorFlow opens its native libraries into the process's global symbol scope (RTLD_GLOBAL),
    so a PyTorch loaded after it resolves over a hundred of its own C++ symbols (template
    instances such as std::vector<std::function<void()>>::_M_realloc_insert) to TensorFlow's
    copies: harmless only where both were built alike, a segmentation fault elsewhere. PyTorch
    loads its libraries privately (RTLD_LOCAL), so loaded first, each runtime keeps its own code:
    no symbol crosses in either direction (glibc's LD_DEBUG=bindings; tested)."""
    if "torch" in sys.modules:
        return
    if "tensorflow" in sys.modules:
        raise ConfigError(
            "runtime.backend torch: TensorFlow is already loaded in this process, and PyTorch loaded after it "
            "would run some of TensorFlow's native code in place of its own; run aecli in a new process"
        )
    import torch  # noqa: F401  (its libraries must be mapped before TensorFlow's)
