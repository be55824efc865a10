"""Training losses beyond Keras's own: the trimmed loss of `training.robust` (contaminated data)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="aecli")
class TrimmedLoss(keras.losses.Loss):
    """`base` per sample, with the `trim` fraction of each batch's highest losses left out.

    Unsupervised anomaly detection trains on rows that hold the anomalies: an autoencoder that
    fits them well cannot tell them apart afterwards. The rows a batch reconstructs worst are the
    likeliest anomalies, so they do not pull on the weights (a trimmed mean, as in robust
    regression). The kept rows' mean is rescaled to a full batch's, so the step size is unchanged.
    """

    def __init__(self, base: keras.losses.Loss, trim: float, name: str = "trimmed", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.base, self.trim = base, float(trim)
        self.base.reduction = None  # one value per row (the mean over its other axes, below)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        per_element = self.base(y_true, y_pred)
        per_row = ops.mean(ops.reshape(per_element, (ops.shape(per_element)[0], -1)), axis=1)
        rows = ops.shape(per_row)[0]
        kept = ops.maximum(1, ops.cast(ops.floor(ops.cast(rows, "float32") * (1.0 - self.trim)), "int32"))
        cutoff = ops.take(ops.sort(per_row), kept - 1)  # the largest loss that is kept
        keep = ops.cast(per_row <= cutoff, per_row.dtype)
        return per_row * keep * ops.cast(rows, per_row.dtype) / ops.cast(kept, per_row.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "base": keras.losses.serialize(self.base), "trim": self.trim}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrimmedLoss:
        config = dict(config)
        return cls(keras.losses.deserialize(config.pop("base")), **config)
