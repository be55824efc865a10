"""Autoencoder architectures: a TensorFlow-free layer plan, and the Keras builder that follows it.

The plan is the single description of a model: `aecli validate` prints it (parameter counts
without importing Keras) and `build_autoencoder` turns it into built-in Keras layers, so
the saved `.keras` files load in plain Keras.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from aecli.config import ModelConfig
from aecli.errors import ConfigError

if TYPE_CHECKING:
    import keras

# Bytes held per parameter while training: weights, gradients and up to two optimizer slots (float32).
TRAINING_BYTES_PER_PARAMETER = 16


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the plan: `part` is encoder or decoder, `units` is set for Dense layers."""

    part: str
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int = 0
    units: int | None = None
    activation: str | None = None


class Autoencoder(NamedTuple):
    model: keras.Model
    encoder: keras.Model
    decoder: keras.Model


def plan_autoencoder(cfg: ModelConfig, input_shape: tuple[int, ...]) -> list[LayerSpec]:
    """The layers of the encoder then the decoder, with output shapes and parameter counts."""
    features = math.prod(input_shape)
    plan: list[LayerSpec] = []
    if len(input_shape) > 1:
        plan.append(LayerSpec("encoder", "flatten", "Flatten", (features,)))
    width = features
    assert cfg.decoder is not None and cfg.output_activation is not None  # resolved by validation
    dense_stack = [*cfg.encoder, cfg.latent_dim]
    for index, units in enumerate(dense_stack, start=1):
        is_latent = index == len(dense_stack)
        plan.append(
            LayerSpec(
                "encoder",
                "latent" if is_latent else f"encoder_dense_{index}",
                "Dense",
                (units,),
                width * units + units,
                units,
                cfg.latent_activation if is_latent else cfg.activation,
            )
        )
        width = units
    for index, units in enumerate(cfg.decoder, start=1):
        plan.append(
            LayerSpec(
                "decoder", f"decoder_dense_{index}", "Dense", (units,), width * units + units, units, cfg.activation
            )
        )
        width = units
    plan.append(
        LayerSpec(
            "decoder",
            "reconstruction",
            "Dense",
            (features,),
            width * features + features,
            features,
            cfg.output_activation,
        )
    )
    if len(input_shape) > 1:
        plan.append(LayerSpec("decoder", "reshape", "Reshape", tuple(input_shape)))
    return plan


def count_parameters(plan: list[LayerSpec]) -> int:
    return sum(layer.parameters for layer in plan)


def check_model_fits_memory(plan: list[LayerSpec]) -> None:
    """Refuse absurd sizes before Keras allocates anything, with the estimate in the message."""
    needed = count_parameters(plan) * TRAINING_BYTES_PER_PARAMETER
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > 0.8 * available:
        raise ConfigError(
            f"model: {count_parameters(plan):,} parameters need about {needed / 2**30:.1f} GiB to train "
            f"(weights, gradients, optimizer state), more than this machine's {available / 2**30:.1f} GiB; "
            f"reduce model.encoder, model.decoder or model.latent_dim"
        )


def build_autoencoder(cfg: ModelConfig, input_shape: tuple[int, ...]) -> Autoencoder:
    """Build encoder, decoder and the end-to-end model from built-in Keras layers (functional API)."""
    import keras

    plan = plan_autoencoder(cfg, input_shape)
    encoder_input = keras.Input(shape=input_shape, name="input")
    latent = _apply(encoder_input, [spec for spec in plan if spec.part == "encoder"])
    encoder = keras.Model(encoder_input, latent, name="encoder")

    decoder_input = keras.Input(shape=(cfg.latent_dim,), name="code")
    reconstruction = _apply(decoder_input, [spec for spec in plan if spec.part == "decoder"])
    decoder = keras.Model(decoder_input, reconstruction, name="decoder")

    model = keras.Model(encoder_input, decoder(encoder(encoder_input)), name="autoencoder")
    return Autoencoder(model, encoder, decoder)


def _apply(tensor: Any, specs: list[LayerSpec]) -> Any:
    import keras

    for spec in specs:
        if spec.kind == "Flatten":
            tensor = keras.layers.Flatten(name=spec.name)(tensor)
        elif spec.kind == "Reshape":
            tensor = keras.layers.Reshape(spec.output_shape, name=spec.name)(tensor)
        else:
            tensor = keras.layers.Dense(spec.units, activation=spec.activation, name=spec.name)(tensor)
    return tensor
