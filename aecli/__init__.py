"""aecli: train, evaluate and use autoencoders from a YAML file.

Importing the package is cheap on purpose: the CLI's light paths (``--help``,
``validate``, ``schema``) must never pull in TensorFlow.
"""

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN, CPU features, missing CUDA) buries the training
# output; it must be silenced before TensorFlow is first imported. Users can still override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _register_custom_objects_if_keras_is_loaded() -> None:
    # Loading a saved VAE needs aecli's layers registered; doing it here keeps `import aecli`
    # light when Keras is not in use, and makes `import keras, aecli` enough when it is.
    import sys

    if "keras" in sys.modules:
        import aecli.layers  # noqa: F401


_register_custom_objects_if_keras_is_loaded()
