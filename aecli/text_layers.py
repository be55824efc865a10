"""Keras layers and losses of aecli's text models, registered so their `.keras` files load back
(`import aecli.text_layers`, or `aecli.layers.custom_objects()`). Written with `keras.ops` only,
so they run on every backend.

Token ids arrive as float32 (exact below 2^24): the training pipeline carries one dtype.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

WORD_NOISE_KINDS = ("word_deletion", "word_mask", "word_swap")
UNKNOWN_ID = 1  # TextVectorization's [UNK] (0 is padding)


@keras.saving.register_keras_serializable(package="aecli")
class WordNoise(keras.layers.Layer):
    """TSDAE-style corruption of token sequences while training (identity at inference): each
    word is deleted (the rest close up; at least one word is kept), replaced by [UNK], or
    swapped with the next word, with probability `amount`; fresh draws every step."""

    def __init__(self, kind: str, amount: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in WORD_NOISE_KINDS:
            raise ValueError(f"Expected kind in {WORD_NOISE_KINDS}. Received: kind={kind}")
        self.kind, self.amount, self.seed = kind, amount, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, tokens: Any, training: bool | None = None) -> Any:
        if not training:
            return tokens
        ids = ops.cast(tokens, "int32")
        present = ids != 0
        hit = ops.logical_and(keras.random.uniform(ops.shape(ids), seed=self.seed_generator) < self.amount, present)
        if self.kind == "word_mask":
            noisy = ops.where(hit, UNKNOWN_ID, ids)
        elif self.kind == "word_deletion":
            noisy = _delete(ids, present, hit)
        else:
            noisy = _swap(ids, present, hit)
        return ops.cast(noisy, tokens.dtype)

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind, "amount": self.amount, "seed": self.seed}


def _delete(ids: Any, present: Any, hit: Any) -> Any:
    length = ops.shape(ids)[1]
    positions = ops.expand_dims(ops.arange(length), 0)
    keep = ops.logical_and(present, ops.logical_not(hit))
    nothing_kept = ops.logical_not(ops.any(keep, axis=1, keepdims=True))
    keep = ops.logical_or(keep, ops.logical_and(nothing_kept, ops.logical_and(positions == 0, present)))
    order = ops.argsort(ops.where(keep, positions, positions + length), axis=1)  # kept words first, in order
    moved = ops.take_along_axis(ids, order, axis=1)
    count = ops.sum(ops.cast(keep, "int32"), axis=1, keepdims=True)
    return ops.where(positions < count, moved, 0)


def _swap(ids: Any, present: Any, hit: Any) -> Any:
    after = ops.pad(ids[:, 1:], [[0, 0], [0, 1]])
    before = ops.pad(ids[:, :-1], [[0, 0], [1, 0]])
    can = ops.logical_and(hit, after != 0)
    earlier = ops.pad(can[:, :-1], [[0, 0], [1, 0]])
    swap = ops.logical_and(can, ops.logical_not(earlier))  # no word takes part in two swaps
    swapped_before = ops.pad(swap[:, :-1], [[0, 0], [1, 0]])
    return ops.where(swap, after, ops.where(swapped_before, before, ids))


@keras.saving.register_keras_serializable(package="aecli")
class SequencePooling(keras.layers.Layer):
    """Token states to one sentence vector: their mean or max over the words (padding left
    out), the first token's state (cls) or the last word's (last). Inputs: [states, tokens]."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("mean", "max", "cls", "last"):
            raise ValueError(f"Expected mode mean, max, cls or last. Received: mode={mode}")
        self.mode = mode

    def call(self, inputs: list[Any]) -> Any:
        states, tokens = inputs
        present = ops.expand_dims(ops.cast(ops.cast(tokens, "int32") != 0, states.dtype), -1)
        if self.mode == "cls":
            return states[:, 0]
        if self.mode == "mean":
            return ops.sum(states * present, axis=1) / ops.maximum(ops.sum(present, axis=1), 1.0)
        if self.mode == "max":
            lowest = ops.min(states) - 1.0
            return ops.max(ops.where(present > 0, states, lowest), axis=1)
        last = ops.maximum(ops.sum(ops.cast(present, "int32"), axis=1) - 1, 0)  # (batch, 1)
        return ops.squeeze(ops.take_along_axis(states, ops.expand_dims(last, -1), axis=1), 1)

    def compute_output_shape(self, input_shape: list[tuple[int, ...]]) -> tuple[int, ...]:
        states = input_shape[0]
        return (states[0], states[-1])

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="aecli")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position (Transformer blocks see word order through it)."""

    def __init__(self, length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length = length
        self.supports_masking = True

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.positions = self.add_weight(
            shape=(self.length, input_shape[-1]), initializer=keras.initializers.RandomNormal(stddev=0.02)
        )

    def call(self, inputs: Any) -> Any:
        return inputs + ops.cast(ops.expand_dims(self.positions[: ops.shape(inputs)[1]], 0), inputs.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "length": self.length}


@keras.saving.register_keras_serializable(package="aecli")
class VariationalCode(keras.layers.Layer):
    """A sentence VAE's code from [z_mean, z_log_var]: while training a sample around the mean,
    with beta x KL(q(z|x) || N(0, I)) / `tokens` added to the model's loss (per token, like the
    reconstruction term); beta rises linearly from 0 over `warmup_steps` training steps (KL
    annealing). At inference the code is the mean."""

    def __init__(self, beta: float, tokens: int, warmup_steps: int = 0, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta, self.tokens, self.warmup_steps, self.seed = beta, tokens, warmup_steps, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape: Any) -> None:
        self.steps = self.add_weight(shape=(), initializer="zeros", trainable=False, name="steps")

    def call(self, inputs: list[Any], training: bool | None = None) -> Any:
        z_mean, z_log_var = inputs
        if not training:
            return z_mean
        kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        weight = self.beta
        if self.warmup_steps:
            weight = self.beta * ops.minimum(1.0, self.steps / self.warmup_steps)
            self.steps.assign(self.steps + 1.0)
        self.add_loss(weight * ops.mean(kl) / self.tokens)
        epsilon = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def compute_output_shape(self, input_shape: list[tuple[int, ...]]) -> tuple[int, ...]:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        config = {"beta": self.beta, "tokens": self.tokens, "warmup_steps": self.warmup_steps, "seed": self.seed}
        return {**super().get_config(), **config}


def token_mask(ids: Any) -> Any:
    """The positions a sequence model is scored on: every word, and the first padding after the
    last word (the end of the sentence, so greedy decoding learns where to stop)."""
    length = ops.shape(ids)[1]
    words = ops.sum(ops.cast(ids != 0, "int32"), axis=1, keepdims=True)
    return ops.cast(ops.expand_dims(ops.arange(length), 0) <= words, "float32")


def token_errors(y_true: Any, logits: Any) -> tuple[Any, Any]:
    """Per sequence: the mean cross-entropy (nats per token) and the share of tokens right."""
    ids = ops.cast(y_true, "int32")
    mask = token_mask(ids)
    count = ops.sum(mask, axis=1)
    xent = ops.sparse_categorical_crossentropy(ids, ops.cast(logits, "float32"), from_logits=True)
    right = ops.cast(ops.argmax(logits, axis=-1) == ids, "float32")
    return ops.sum(xent * mask, axis=1) / count, ops.sum(right * mask, axis=1) / count


@keras.saving.register_keras_serializable(package="aecli")
class TokenCrossentropy(keras.losses.Loss):
    """A sequence model's loss: the cross-entropy of each target token from the logits, averaged
    over the words and the end of each sentence (padding after it is not scored)."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return token_errors(y_true, y_pred)[0]


@keras.saving.register_keras_serializable(package="aecli")
class BagOfWordsCrossentropy(keras.losses.Loss):
    """A bag-of-words model's loss against its input vector (tf_idf, count or multi_hot):
    `bce`, the binary cross-entropy of each vocabulary word's presence (sigmoid outputs); or
    `xent`, the cross-entropy of the words drawn from the softmax output, weighted by the
    input (counts: the multinomial document likelihood per word)."""

    def __init__(self, kind: str = "bce", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return bag_errors(y_true, y_pred, self.kind)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind}


EPSILON = 1e-7


def bag_errors(y_true: Any, y_pred: Any, kind: str) -> Any:
    y_pred = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1 - EPSILON)
    if kind == "bce":
        present = ops.cast(y_true > 0, "float32")
        return -ops.mean(present * ops.log(y_pred) + (1 - present) * ops.log(1 - y_pred), axis=-1)
    weights = ops.maximum(ops.cast(y_true, "float32"), 0.0)
    weights = weights / ops.maximum(ops.sum(weights, axis=-1, keepdims=True), EPSILON)
    return -ops.sum(weights * ops.log(y_pred), axis=-1)


def custom_objects() -> dict[str, Any]:
    return {
        "WordNoise": WordNoise,
        "SequencePooling": SequencePooling,
        "PositionEmbedding": PositionEmbedding,
        "TokenCrossentropy": TokenCrossentropy,
        "BagOfWordsCrossentropy": BagOfWordsCrossentropy,
        "VariationalCode": VariationalCode,
    }
