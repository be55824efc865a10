"""Scaling (to [0, 1], or z-scores), fitted on the training split and saved with the run, and the
aligned buffers that scaled arrays live in (so TensorFlow can use them without a copy)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aecli.errors import DataError

TENSOR_ALIGNMENT = 64  # bytes: TensorFlow's CPU kernels read buffers aligned like this


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on a TENSOR_ALIGNMENT boundary, so
    that the training pipeline can hand it to TensorFlow without a copy."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


@dataclass(frozen=True)
class Scaling:
    """x_scaled = (x - offset) / scale; offset/scale are scalars, per-feature arrays, or for
    sequences per-channel arrays of shape (1, channels), which broadcast over the steps."""

    kind: str
    offset: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray, what: str | None = None, first: int = 0) -> np.ndarray:
        """Scaled float32 rows in a buffer TensorFlow can use without copying (see aligned_empty).
        A row beyond float32 is refused naming it: `what` (the file) and its row counted from 1
        after `first` rows."""
        out = aligned_empty(x.shape, np.dtype(np.float32))
        offset, scale = self.shaped_for(x)
        with np.errstate(over="ignore", invalid="ignore"):
            np.subtract(x, offset, out=out, casting="unsafe")
            np.divide(out, scale, out=out, casting="unsafe")
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))[0])
            where = f"{what}: row {first + bad + 1} has" if what else f"row {first + bad + 1} has"
            raise DataError(
                f"{where} values beyond float32's range (about ±3.4e38) after scaling; rescale the data (or drop "
                "the row)"
            )
        return out

    def invert(self, x: np.ndarray) -> np.ndarray:
        offset, scale = self.shaped_for(x)
        return x * scale + offset

    def shaped_for(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature statistics (minmax) are stored flat; images need them in their own shape."""
        if self.offset.ndim == 1 and x.ndim > 2 and self.offset.size == math.prod(x.shape[1:]):
            return self.offset.reshape(x.shape[1:]), self.scale.reshape(x.shape[1:])
        return self.offset, self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaling:
        return cls(data["kind"], np.asarray(data["offset"], np.float64), np.asarray(data["scale"], np.float64))


def fit_scaling(x_train: np.ndarray, kind: str, is_image: bool) -> Scaling:
    """Fit the scaling on the training split only, so validation and test stay unseen."""
    flat = x_train.reshape(len(x_train), -1)
    if kind in ("zscore", "zscore_global"):
        return _zscore(flat, kind)
    if kind == "robust":
        return _robust(flat)
    # min and max are exact in any dtype: no float64 copy
    low, high = flat.min(axis=0).astype(np.float64), flat.max(axis=0).astype(np.float64)
    return scaling_from_ranges(kind, low, high, x_train.dtype, is_image)


def fit_channel_scaling(x_train: np.ndarray, kind: str, default: str) -> Scaling:
    """The scaling of sequences, per channel: statistics over every step of every training sample
    (x_train is (steps, channels) or (samples, steps, channels)); `default` is what auto means."""
    kind = default if kind == "auto" else kind
    flat = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
    if kind in ("zscore", "zscore_global"):
        scaling = _zscore(flat, kind)
        return Scaling(kind, scaling.offset.reshape(1, -1), scaling.scale.reshape(1, -1))
    if kind == "robust":
        scaling = _robust(flat)
        return Scaling(kind, scaling.offset.reshape(1, -1), scaling.scale.reshape(1, -1))
    low, high = flat.min(axis=0), flat.max(axis=0)
    if kind in ("global", "none"):
        return scaling_from_ranges(kind, low, high, x_train.dtype, is_image=False)
    span = np.where(high > low, high - low, 1.0)
    return _finite_scaling(Scaling("minmax", low.reshape(1, -1), span.reshape(1, -1)))


def scaling_from_ranges(kind: str, low: np.ndarray, high: np.ndarray, dtype: np.dtype, is_image: bool) -> Scaling:
    """The scaling for per-feature training minima and maxima (which a streaming pass can compute)."""
    if kind == "auto":
        if dtype == np.uint8:
            return Scaling("uint8", np.zeros((), np.float32), np.full((), 255.0, np.float32))
        kind = "global" if is_image else "minmax"
    if kind == "none":
        return Scaling("none", np.zeros((), np.float32), np.ones((), np.float32))
    if kind in ("zscore", "zscore_global", "robust"):
        raise DataError(f"data.scaling {kind}: not available for streamed shard folders (use minmax or global)")
    if kind == "global":
        low_g, high_g = float(low.min()), float(high.max())
        span = high_g - low_g if high_g > low_g else 1.0
        return _finite_scaling(Scaling("global", np.asarray(low_g), np.asarray(span)))
    span_f = np.where(high > low, high - low, 1.0)
    return _finite_scaling(Scaling("minmax", low.astype(np.float64), span_f.astype(np.float64)))


def _zscore(flat: np.ndarray, kind: str) -> Scaling:
    """(x - mean) / std per column of `flat` (zscore) or over all of it (zscore_global), in
    float64; a constant column keeps a scale of 1."""
    values = flat.astype(np.float64)
    if kind == "zscore_global":
        values = values.reshape(-1, 1)
    mean, std = values.mean(axis=0), values.std(axis=0)
    return _finite_scaling(Scaling(kind, mean, np.where(std > 0, std, 1.0)))


# The IQR of a normal distribution is 1.349 standard deviations: robust z-scores then read like z-scores.
IQR_PER_STD = 1.349


def _robust(flat: np.ndarray) -> Scaling:
    """(x - median) / (IQR / 1.349) per column, in float64: a share of outliers in the training
    rows (the unsupervised case) moves neither statistic, where they inflate a mean and a std.
    A column whose IQR is 0 (mostly one value) falls back to its std; a constant one keeps 1."""
    values = flat.astype(np.float64)
    low, median, high = np.percentile(values, [25, 50, 75], axis=0)
    spread = (high - low) / IQR_PER_STD
    std = values.std(axis=0)
    scale = np.where(spread > 0, spread, np.where(std > 0, std, 1.0))
    return _finite_scaling(Scaling("robust", median, scale))


def _finite_scaling(scaling: Scaling) -> Scaling:
    """Offsets and spans are kept in float64, so that data of large magnitude (timestamps, ids:
    1e12 + small changes) still scales exactly; they must fit float32 too, which streamed shards
    scale in: ±3e38 in one column spans 6e38, which does not."""
    limit = float(np.finfo(np.float32).max)
    if not (np.abs(scaling.offset) <= limit).all() or not (np.abs(scaling.scale) <= limit).all():
        raise DataError(
            f"data.scaling {scaling.kind}: the training data spans more than float32 holds (about 3.4e38); "
            "rescale the data first"
        )
    return scaling
