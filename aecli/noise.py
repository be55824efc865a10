"""Input corruption for denoising: `gaussian:0.3`, `salt_pepper:0.1`, `mask:0.2` on data in [0, 1]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import WORD_NOISES, NoiseConfig
from aecli.errors import ConfigError

NOISE_FORMS = "gaussian:STD, salt_pepper:FRACTION or mask:FRACTION"


@dataclass(frozen=True)
class NoiseSpec:
    kind: str
    amount: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"


def noise_spec(cfg: NoiseConfig | None) -> NoiseSpec | None:
    """`training.noise` as the spec that training's feeds and compiled steps use (word noise is
    applied inside a sequence model instead: text_layers.WordNoise)."""
    return None if cfg is None or cfg.kind in WORD_NOISES else NoiseSpec(cfg.kind, cfg.amount)


def parse_noise(spec: str, option: str = "--noise") -> NoiseSpec:
    kind, sep, text = spec.partition(":")
    try:
        amount = float(text)
    except ValueError:
        raise ConfigError(f"{option} {spec!r}: expected {NOISE_FORMS}") from None
    if not sep or kind not in ("gaussian", "salt_pepper", "mask"):
        raise ConfigError(f"{option} {spec!r}: expected {NOISE_FORMS}")
    if kind == "gaussian" and not (amount > 0 and math.isfinite(amount)):
        raise ConfigError(f"{option} {spec!r}: the gaussian standard deviation must be above 0")
    if kind != "gaussian" and not 0 < amount <= 1:
        raise ConfigError(f"{option} {spec!r}: the {kind} fraction must be in (0, 1]")
    return NoiseSpec(kind, amount)


def corrupt(x: np.ndarray, noise: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """A corrupted copy of `x`, clipped to [0, 1]: additive Gaussian noise, pixels set to 0 or 1
    (salt and pepper), or pixels set to 0 (mask)."""
    if noise.kind == "gaussian":
        noisy = x + rng.normal(0.0, noise.amount, size=x.shape)
    elif noise.kind == "salt_pepper":
        hit = rng.random(x.shape) < noise.amount
        noisy = np.where(hit, (rng.random(x.shape) < 0.5).astype(x.dtype), x)
    else:
        noisy = np.where(rng.random(x.shape) < noise.amount, 0.0, x)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def corrupt_tensor(x: Any, noise: NoiseSpec, seed: Any) -> Any:
    """`corrupt` with TensorFlow's stateless random ops, for use inside a compiled training step:
    `seed` (two integers) picks the draw, so each step's noise is fresh and reproducible."""
    tf = import_tensorflow()
    shape = tf.shape(x)
    first, second = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if noise.kind == "gaussian":
        noisy = x + tf.random.stateless_normal(shape, first, stddev=noise.amount, dtype=x.dtype)
    elif noise.kind == "salt_pepper":
        hit = tf.random.stateless_uniform(shape, first) < noise.amount
        salt = tf.cast(tf.random.stateless_uniform(shape, second) < 0.5, x.dtype)
        noisy = tf.where(hit, salt, x)
    else:
        noisy = tf.where(tf.random.stateless_uniform(shape, first) < noise.amount, tf.zeros_like(x), x)
    return tf.clip_by_value(noisy, 0.0, 1.0)
