"""A trained run as one standalone graph for production, through Keras's
`model.export`: a TensorFlow SavedModel, ONNX, or LiteRT (TensorFlow Lite).

The exported graph takes *raw* rows, as the user's files hold them: the run's scaling is inside
it. It returns the reconstruction (in raw units), the score (the run's error measure, computed
as evaluate and score compute it), the anomaly flag at the run's threshold, and the embedding.
Everything a consumer needs to apply it (threshold, scaling, shapes, versions) is written beside
the model as metadata.json, and into the ONNX file's own metadata too.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from aecli import __version__
from aecli.backend import import_tensorflow
from aecli.calibration import InUse
from aecli.errors import AecliError, clip
from aecli.evaluation import BCE_EPSILON, SSIM_K1, SSIM_K2, ssim_window
from aecli.runs import now_iso
from aecli.trained_run import TrainedRun, load_model

# The user's name for a format -> Keras's name, the model file inside the export folder, and the
# packages its conversion needs beyond TensorFlow.
FORMATS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "savedmodel": ("tf_saved_model", "saved_model", ()),
    "onnx": ("onnx", "model.onnx", ("tf2onnx", "onnx")),
    "litert": ("litert", "model.tflite", ()),
}
# LiteRT converts Keras's recurrent loop only into TensorFlow "Select" ops, which the LiteRT
# runtime cannot run without the Flex delegate: a file that loads nowhere it is meant for.
UNSUPPORTED = {("litert", "lstm"), ("litert", "gru")}
METADATA_FILE = "metadata.json"
INPUT_NAME = "inputs"


class ExportError(AecliError):
    """A run that cannot be exported in the asked format (a missing converter, an unsupported layer)."""


def serving_model(run: TrainedRun, in_use: InUse) -> Any:
    """A Keras model from raw rows to {reconstruction, score, anomalous, embedding}: the run's
    scaling, its autoencoder and encoder, and the score and flag as evaluate computes them."""
    import_tensorflow()  # (quietly, before Keras imports it)
    import keras
    from keras import ops

    autoencoder = load_model(run.path / "model.keras", compile=False)
    encoder = load_model(run.path / "encoder.keras", compile=False)
    shape, size = run.sample_shape, math.prod(run.sample_shape)
    # Scaling is applied to flattened rows: TFLite's converter mis-fuses a per-step add on (steps, channels).
    offset, scale = (part.reshape(size) for part in _scaling_arrays(run, shape))
    raw = keras.Input(shape=shape, name=INPUT_NAME, dtype="float32")
    target = (ops.reshape(raw, (-1, size)) - offset) / scale
    x = ops.reshape(target, (-1, *shape))
    x_hat = autoencoder(x, training=False)
    code = encoder(x, training=False)
    code = code[0] if isinstance(code, (list, tuple)) else code  # a VAE's code is z_mean
    predicted = ops.reshape(x_hat, (-1, size))
    score = _score(in_use.score, target, predicted, shape)
    outputs = {
        "reconstruction": ops.reshape(predicted * scale + offset, (-1, *shape)),
        "score": score,
        "anomalous": ops.greater(score, in_use.value),
        "embedding": ops.reshape(code, (-1, math.prod(code.shape[1:]))),
    }
    return keras.Model(raw, outputs, name="aecli_detector")


def _score(name: str, target: Any, predicted: Any, shape: tuple[int, ...]) -> Any:
    from keras import ops

    if name == "dssim":
        return _dssim(ops.reshape(target, (-1, *shape)), ops.reshape(predicted, (-1, *shape)))
    diff = predicted - target
    if name == "mse":
        return ops.mean(ops.square(diff), axis=1)
    if name == "mae":
        return ops.mean(ops.abs(diff), axis=1)
    p = ops.clip(predicted, BCE_EPSILON, 1 - BCE_EPSILON)
    return -ops.mean(target * ops.log(p) + (1 - target) * ops.log(1 - p), axis=1)


def _dssim(images: Any, rebuilt: Any) -> Any:
    """(1 - SSIM) / 2 per image, as evaluation.structural_similarity computes it, in the graph:
    the Gaussian window as a depthwise convolution over each channel."""
    from keras import ops

    height, width, channels = images.shape[1:]
    weights = ssim_window(height, width)
    kernel = np.tile(np.outer(weights, weights)[:, :, None, None], (1, 1, channels, 1)).astype("float32")

    def means(values: Any) -> Any:
        return ops.depthwise_conv(values, kernel, strides=1, padding="valid")

    rebuilt = ops.clip(rebuilt, 0.0, 1.0)
    mean_x, mean_y = means(images), means(rebuilt)
    var_x = means(images * images) - mean_x * mean_x
    var_y = means(rebuilt * rebuilt) - mean_y * mean_y
    covariance = means(images * rebuilt) - mean_x * mean_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    luminance = (2 * mean_x * mean_y + c1) / (mean_x * mean_x + mean_y * mean_y + c1)
    structure = (2 * covariance + c2) / (var_x + var_y + c2)
    return (1.0 - ops.mean(luminance * structure, axis=(1, 2, 3))) / 2


def _scaling_arrays(run: TrainedRun, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The run's offset and scale as float32 arrays of the sample's shape (they broadcast over rows)."""
    probe = np.zeros((1, *shape), np.float32)
    offset, scale = (np.broadcast_to(part, shape).astype(np.float32) for part in run.scaling.shaped_for(probe))
    return offset, scale


def export_graph(model: Any, path: Path, keras_format: str, run: TrainedRun) -> None:
    """Keras's export; a conversion that fails is one line naming the run's model kind."""
    tf = import_tensorflow()
    signature = [tf.TensorSpec((None, *run.sample_shape), tf.float32, name=INPUT_NAME)]
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # its per-op notes are not the user's business
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # converters' deprecation notes about their own dependencies
            model.export(str(path), format=keras_format, verbose=False, input_signature=signature)
    except Exception as exc:  # the converters raise many types; the reason is what matters
        reason = clip(" ".join(str(exc).split()) or type(exc).__name__, 300)
        kind = run.config.model.kind
        raise ExportError(f"model kind {kind} cannot be exported to {keras_format}: {reason}") from None


def export_metadata(run: TrainedRun, in_use: InUse, format_name: str, model_name: str) -> dict[str, Any]:
    """What a consumer of the exported file needs: its inputs and outputs, the threshold, the
    scaling inside it, and where it came from."""
    tf = import_tensorflow()
    import keras

    return {
        "format": format_name,
        "model_file": model_name,
        "created": now_iso(),
        "run": run.path.name,
        "model_kind": run.config.model.kind,
        "input": {"name": INPUT_NAME, "shape": [None, *run.sample_shape], "dtype": "float32", "units": "raw"},
        "outputs": {
            "reconstruction": f"shape [None, {', '.join(map(str, run.sample_shape))}], raw units",
            "score": f"per-row {in_use.score} between the scaled input and its reconstruction",
            "anomalous": f"score > threshold ({in_use.value:.9g})",
            "embedding": "the encoder's code (a VAE's z_mean), flattened",
        },
        "threshold": {"score": in_use.score, "value": in_use.value, "method": in_use.method},
        "scaling": {**run.scaling.to_dict(), "applied": "inside the graph: (x - offset) / scale"},
        "versions": {"aecli": __version__, "keras": keras.__version__, "tensorflow": tf.__version__},
    }


def embed_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """The threshold and preprocessing as the ONNX file's own metadata_props, so they travel with it."""
    import onnx

    model = onnx.load(str(path))
    for key in ("threshold", "scaling", "outputs", "input"):
        entry = model.metadata_props.add()
        entry.key, entry.value = f"aecli.{key}", json.dumps(metadata[key])
    onnx.save(model, str(path))
