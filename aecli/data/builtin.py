"""The built-in sources: scikit-learn's digits (bundled, offline) and keras.datasets' MNIST
and Fashion-MNIST (downloaded once, cached by Keras)."""

from __future__ import annotations

import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import BUILTIN_SOURCES
from aecli.data.arrays import RawData
from aecli.data.source_kind import SourceKind, SourceRequest
from aecli.errors import DataError

KNOWN_SHAPES: dict[str, tuple[int, ...]] = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1)}
# Keras's cache file per downloadable source, named in the offline error.
KERAS_ARCHIVES = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist (4 IDX .gz files)"}


def _read_digits() -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return RawData(digits.images.astype(np.float32), digits.target.astype(np.int64), None, None)


def _read_keras_dataset(name: str) -> RawData:
    import_tensorflow()
    import keras

    loader = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as exc:  # keras reports a failed download as a bare Exception
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"data.source {name}: could not download it ({reason}); offline, copy {KERAS_ARCHIVES[name]} into "
            f"~/.keras/datasets/, or point at local files: --set data.source=path/to/train-images-idx3-ubyte.gz "
            f"(labels found beside it), a folder of the IDX files, or an .npz with x_train/y_train/x_test/y_test"
        ) from None
    return RawData(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))


def read_builtin(request: SourceRequest) -> RawData:
    return _read_digits() if request.source == "digits" else _read_keras_dataset(request.source)


SOURCE_KIND = SourceKind(
    "built-in",
    claims=lambda request: request.source in BUILTIN_SOURCES,
    read=read_builtin,
    sample_shape=lambda request: KNOWN_SHAPES[request.source],
)
