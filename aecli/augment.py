"""Training-data augmentation (data.augment): random translation, rotation, zoom, flips and
contrast of the training images, fresh every step, reproducible from the seed; validation and
test data are never augmented. The target of an augmented image is the augmented image itself
(with training.noise: its clean augmented version).

The amounts mean what they mean to Keras's RandomTranslation, RandomRotation, RandomZoom,
RandomFlip and RandomContrast layers, but the draws are applied differently: the geometric ones
are composed into one affine map per image and the image is resampled once (bilinear), in
TensorFlow ops that XLA compiles. Chaining Keras's layers resamples once per layer (the blur
adds up) and runs ImageProjectiveTransformV3, which XLA cannot compile on a CPU: measured here,
it made the dense model of configs/mnist.yaml take 3x as long per epoch; this costs about a tenth.
TensorFlow is imported inside the functions, so that `aecli validate` checks a config without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import GEOMETRIC_AUGMENTATIONS, AugmentConfig
from aecli.errors import ConfigError

# images (n, height, width, channels) and a stateless seed (two integers) -> augmented images
Augment = Callable[[Any, Any], Any]


def check_augment(cfg: AugmentConfig, sample_shape: tuple[int, ...]) -> None:
    """Refuse augmentations the data cannot take: every one needs images (height, width, channels)."""
    if not cfg.active or len(sample_shape) == 3:
        return
    first = cfg.active[0]
    kind = "move pixels" if first in GEOMETRIC_AUGMENTATIONS else "change an image's contrast"
    raise ConfigError(
        f"data.augment.{first}: augmentations {kind} and need images (height, width, channels), but this data's "
        f"samples have shape {sample_shape}, with no spatial layout; remove data.augment"
    )


def augmenter(cfg: AugmentConfig, value_range: tuple[float, float]) -> Augment | None:
    """The augmentation as one XLA-compiled TensorFlow function of (images, seed), or None when
    nothing is on. `value_range` is the scaled training data's (contrast is clipped to it)."""
    tf = import_tensorflow()
    if not cfg.active:
        return None
    low, high = value_range

    @tf.function(jit_compile=True)
    def augment(images: Any, seed: Any) -> Any:
        geometric, contrast = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
        if any(name in GEOMETRIC_AUGMENTATIONS for name in cfg.active):
            images = _resampled(images, _affine_sources(cfg, tf.shape(images)[0], images.shape[1:3], geometric), cfg)
        if cfg.contrast:
            images = _contrasted(images, cfg.contrast, contrast, low, high)
        return images

    return augment


def _affine_sources(cfg: AugmentConfig, count: Any, size: tuple[int, int], seed: Any) -> tuple[Any, Any]:
    """Where each output pixel samples its image, as (rows, columns) of shape (count, height * width):
    p -> c + R(angle) Z(1 + zoom) F (p - c) - shift, about the image centre c, with F the flips."""
    tf = import_tensorflow()
    height, width = size
    draws = tf.unstack(tf.random.experimental.stateless_split(seed, 6))

    def uniform(amount: float, draw: Any) -> Any:
        return tf.random.stateless_uniform((count, 1), draw, -amount, amount)

    angle = uniform(cfg.rotation * 2 * math.pi, draws[0])
    scale = 1.0 + uniform(cfg.zoom, draws[1])
    shift_rows, shift_columns = uniform(cfg.translation * height, draws[2]), uniform(cfg.translation * width, draws[3])
    flip_rows = _random_sign(count, cfg.flip in ("vertical", "horizontal_and_vertical"), draws[4])
    flip_columns = _random_sign(count, cfg.flip in ("horizontal", "horizontal_and_vertical"), draws[5])
    centre_row, centre_column = (height - 1) / 2, (width - 1) / 2
    rows, columns = tf.meshgrid(
        tf.range(height, dtype=tf.float32) - centre_row,
        tf.range(width, dtype=tf.float32) - centre_column,
        indexing="ij",
    )
    rows = tf.reshape(rows, (1, -1)) * scale * flip_rows
    columns = tf.reshape(columns, (1, -1)) * scale * flip_columns
    cos, sin = tf.cos(angle), tf.sin(angle)
    source_rows = cos * rows - sin * columns + centre_row - shift_rows
    source_columns = sin * rows + cos * columns + centre_column - shift_columns
    return source_rows, source_columns


def _random_sign(count: Any, enabled: bool, seed: Any) -> Any:
    """-1 for about half the images (flipped), +1 for the rest; all +1 when not `enabled`."""
    tf = import_tensorflow()
    if not enabled:
        return tf.ones((count, 1))
    return tf.where(tf.random.stateless_uniform((count, 1), seed) < 0.5, -1.0, 1.0)


def _resampled(images: Any, sources: tuple[Any, Any], cfg: AugmentConfig) -> Any:
    """Bilinear resampling of each image at its source coordinates (one gather per corner)."""
    tf = import_tensorflow()
    height, width, channels = images.shape[1:]
    flat = tf.reshape(images, (-1, height * width, channels))
    source_rows, source_columns = sources
    top, left = tf.floor(source_rows), tf.floor(source_columns)
    down, right = (source_rows - top)[..., None], (source_columns - left)[..., None]
    top, left = tf.cast(top, tf.int32), tf.cast(left, tf.int32)

    def corner(row: Any, column: Any) -> Any:
        inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        row, column = _fixed_index(row, height, cfg.fill_mode), _fixed_index(column, width, cfg.fill_mode)
        pixels = tf.gather(flat, row * width + column, batch_dims=1)
        if cfg.fill_mode == "constant":
            pixels = tf.where(inside[..., None], pixels, tf.zeros_like(pixels))
        return pixels

    resampled = (
        corner(top, left) * (1 - down) * (1 - right)
        + corner(top, left + 1) * (1 - down) * right
        + corner(top + 1, left) * down * (1 - right)
        + corner(top + 1, left + 1) * down * right
    )
    return tf.reshape(resampled, tf.shape(images))


def _fixed_index(index: Any, size: int, fill_mode: str) -> Any:
    """A pixel index outside [0, size) mapped inside as Keras's fill modes do: nearest repeats the
    edge, reflect mirrors about it (d c b a | a b c d | d c b a), wrap tiles the image; constant
    clamps it (the caller then zeroes those pixels)."""
    tf = import_tensorflow()
    if fill_mode == "wrap":
        return tf.math.floormod(index, size)
    if fill_mode == "reflect":
        folded = tf.math.floormod(index, 2 * size)
        return tf.where(folded < size, folded, 2 * size - 1 - folded)
    return tf.clip_by_value(index, 0, size - 1)


def _contrasted(images: Any, amount: float, seed: Any, low: float, high: float) -> Any:
    """Each image's contrast times a factor in [1 - amount, 1 + amount], about its per-channel mean
    (as keras.layers.RandomContrast), clipped to the data's scaled range."""
    tf = import_tensorflow()
    factor = tf.random.stateless_uniform((tf.shape(images)[0], 1, 1, 1), seed, 1 - amount, 1 + amount)
    mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
    return tf.clip_by_value((images - mean) * factor + mean, low, high)


def augmented_examples(augment: Augment, images: np.ndarray, copies: int, seed: int) -> list[np.ndarray]:
    """`copies` augmented versions of `images`, for the report's picture of what training sees."""
    tf = import_tensorflow()
    batch = tf.constant(images, tf.float32)
    return [augment(batch, tf.constant([seed, copy], tf.int64)).numpy() for copy in range(copies)]
