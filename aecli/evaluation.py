"""Reconstruction metrics on numpy arrays, plus the batched model calls that produce them.

PSNR convention: per sample 10*log10(range^2 / mse), capped at PSNR_CAP_DB so a perfect
reconstruction gives the cap instead of infinity (JSON has no inf); the reported value is
the mean over samples. The range is 1 for data scaled to [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PSNR_CAP_DB = 100.0
BCE_EPSILON = 1e-7
QUANTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}
PREDICT_BATCH_SIZE = 4096


def predict_batched(model: Any, x: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
    """Run `model` over `x` in large batches through its compiled predict step (no per-call overhead)."""
    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    parts = [
        np.asarray(model.predict_on_batch(x[start : start + batch_size])) for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


def per_sample_errors(x: np.ndarray, x_hat: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample mse and mae, and bce when the targets lie in [0, 1]."""
    diff = (x_hat - x).reshape(len(x), -1).astype(np.float64)
    errors = {"mse": np.mean(diff**2, axis=1), "mae": np.mean(np.abs(diff), axis=1)}
    if is_unit_range(x):
        target = x.reshape(len(x), -1).astype(np.float64)
        p = np.clip(x_hat.reshape(len(x), -1).astype(np.float64), BCE_EPSILON, 1 - BCE_EPSILON)
        errors["bce"] = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p), axis=1)
    return errors


def is_unit_range(x: np.ndarray) -> bool:
    return bool(x.size) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def psnr(mse: np.ndarray, data_range: float) -> float:
    """Mean per-sample PSNR in dB, each sample capped at PSNR_CAP_DB."""
    with np.errstate(divide="ignore"):
        values = 10 * np.log10(data_range**2 / mse)
    return float(np.mean(np.minimum(values, PSNR_CAP_DB)))


def reconstruction_report(
    x: np.ndarray,
    x_hat: np.ndarray,
    labels: np.ndarray | None,
    label_names: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metrics.json body (n_samples, reconstruction, per_class, error_quantiles) and per-sample errors."""
    errors = per_sample_errors(x, x_hat)
    data_range = 1.0 if is_unit_range(x) else float(x.max() - x.min()) or 1.0
    reconstruction = {name: float(np.mean(values)) for name, values in errors.items()}
    reconstruction["psnr"] = psnr(errors["mse"], data_range)
    report: dict[str, Any] = {"n_samples": len(x), "reconstruction": reconstruction}
    if labels is not None:
        report["per_class"] = {
            label_name(label, label_names): {
                "mse": float(np.mean(errors["mse"][labels == label])),
                "n": int(np.sum(labels == label)),
            }
            for label in np.unique(labels)
        }
    report["error_quantiles"] = error_quantiles(errors["mse"])
    return report, errors


def error_quantiles(values: np.ndarray) -> dict[str, float]:
    quantiles = {key: float(np.percentile(values, q)) for key, q in QUANTILES.items()}
    quantiles["max"] = float(np.max(values))
    return quantiles


def error_statistics(values: np.ndarray) -> dict[str, float]:
    """Summary of training-set errors, saved with a run to set anomaly thresholds later."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), **error_quantiles(values)}


def label_name(label: Any, label_names: list[str] | None) -> str:
    return label_names[int(label)] if label_names else str(int(label))


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
