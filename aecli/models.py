"""Autoencoder architectures: a TensorFlow-free layer plan, and the Keras builder that follows it.

The plan is the single description of a model: `aecli validate` prints it (parameter counts
without importing Keras) and `build_autoencoder` turns it into Keras layers. Dense and conv
autoencoders use built-in layers only, so their `.keras` files load in plain Keras; a VAE
adds aecli's registered `Sampling` layer and `VariationalAutoencoder` model (see layers.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aecli.config import ModelConfig, NoiseConfig
from aecli.errors import ConfigError
from aecli.model_parts import Autoencoder, LayerSpec
from aecli.text_plan import plan_sequence

if TYPE_CHECKING:
    pass

# Bytes held per parameter while training: weights, gradients and up to two optimizer slots (float32).
TRAINING_BYTES_PER_PARAMETER = 16
# Layers that take the model's kernel regularizers (l1/l2).
WEIGHTED_KINDS = ("Dense", "Conv2D", "Conv2DTranspose", "Conv1D", "Conv1DTranspose", "LSTM", "GRU")
# Weight matrices per recurrent unit (gates): LSTM has four, GRU three (Keras's reset_after GRU
# also has a second bias per gate).
RECURRENT_GATES = {"LSTM": 4, "GRU": 3}


class _Planner:
    """Accumulates layer specs while tracking the current output shape."""

    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...]) -> None:
        self.cfg = cfg
        self.shape = input_shape
        self.part = "encoder"
        self.specs: list[LayerSpec] = []
        self._count: dict[str, int] = {}

    def add(
        self, kind: str, shape: tuple[int, ...], parameters: int = 0, name: str | None = None, **options: Any
    ) -> None:
        if name is None:
            self._count[kind] = self._count.get(kind, 0) + 1
            name = f"{self.part}_{kind.lower()}_{self._count[kind]}"
        self.specs.append(LayerSpec(self.part, name, kind, shape, parameters, options))
        self.shape = shape

    def dense(self, units: int, activation: str, name: str | None = None, hidden: bool = True) -> None:
        inputs = math.prod(self.shape)
        self.add("Dense", (units,), inputs * units + units, name, units=units, activation=activation)
        if hidden:
            self.extras()

    def conv(
        self,
        filters: int,
        strides: int,
        transpose: bool = False,
        activation: str | None = None,
        name: str | None = None,
        hidden: bool = True,
    ) -> None:
        """A Conv1D or Conv2D layer (by the rank of the current shape), or its transpose; "same" padding."""
        *spatial, channels = self.shape
        k = self.cfg.kernel_size
        sizes = tuple(size * strides if transpose else math.ceil(size / strides) for size in spatial)
        self.add(
            f"Conv{len(spatial)}D{'Transpose' if transpose else ''}",
            (*sizes, filters),
            k ** len(spatial) * channels * filters + filters,
            name,
            filters=filters,
            kernel_size=k,
            strides=strides,
            padding="same",
            activation=activation or self.cfg.activation,
        )
        if hidden:
            self.extras()

    def recurrent(self, units: int, return_sequences: bool) -> None:
        kind = "GRU" if self.cfg.kind == "gru" else "LSTM"
        inputs = self.shape[-1]
        biases = 2 * units if kind == "GRU" else units  # reset_after: a second bias per gate
        parameters = RECURRENT_GATES[kind] * (units * (inputs + units) + biases)
        shape = (self.shape[0], units) if return_sequences else (units,)
        self.add(kind, shape, parameters, units=units, return_sequences=return_sequences, activation="tanh")
        self.extras()

    def extras(self) -> None:
        """Batch normalization and dropout after a hidden layer, when configured."""
        if self.cfg.batch_norm:
            self.add("BatchNormalization", self.shape, 4 * self.shape[-1])
        if self.cfg.dropout:
            self.add("Dropout", self.shape, rate=self.cfg.dropout)


def plan_autoencoder(cfg: ModelConfig, input_shape: tuple[int, ...], vocabulary: int | None = None) -> list[LayerSpec]:
    """The layers of the encoder then the decoder, with output shapes and parameter counts.
    `vocabulary`: for text data, the vocabulary size (sequence models embed token ids)."""
    if cfg.kind == "sequence":
        return plan_sequence(cfg, input_shape, vocabulary)
    if cfg.is_recurrent:
        return _plan_recurrent(cfg, input_shape)
    planner = _Planner(cfg, input_shape)
    if cfg.has_blocks:
        (_check_sequence_input if cfg.kind == "conv1d" else _check_conv_input)(cfg, input_shape)
        _encoder_blocks(planner)
    if cfg.kind == "bow":  # tf-idf or count vectors of any length: unit length in, as LSA's input
        planner.add("UnitNormalization", input_shape, name="normalize")
    blocks_shape = planner.shape
    dense_code = cfg.code == "dense"  # else the last block's feature map is the code
    if dense_code:
        if len(planner.shape) > 1:
            planner.add("Flatten", (math.prod(planner.shape),), name="flatten")
        for units in cfg.encoder:
            planner.dense(units, cfg.activation)
        if cfg.kind == "vae":
            code_input = planner.shape
            planner.dense(cfg.latent_dim, "linear", name="z_mean", hidden=False)
            planner.shape = code_input
            planner.dense(cfg.latent_dim, "linear", name="z_log_var", hidden=False)
            planner.add("Sampling", (cfg.latent_dim,), name="z")
        else:
            planner.dense(cfg.latent_dim, cfg.latent_activation, name="latent", hidden=False)

    planner.part = "decoder"
    for units in cfg.decoder if dense_code else ():
        planner.dense(units, cfg.activation)
    if not cfg.has_blocks:
        planner.dense(math.prod(input_shape), cfg.output_activation, name="reconstruction", hidden=False)
        if len(input_shape) > 1:
            planner.add("Reshape", tuple(input_shape), name="reshape", target_shape=tuple(input_shape))
        return planner.specs
    if dense_code:
        planner.dense(math.prod(blocks_shape), cfg.activation)
        planner.add("Reshape", blocks_shape, target_shape=blocks_shape)
    for filters in reversed(cfg.filters):
        planner.conv(filters, strides=2, transpose=True)
    planner.conv(input_shape[-1], strides=1, activation=cfg.output_activation, name="reconstruction", hidden=False)
    return planner.specs


def _encoder_blocks(planner: _Planner) -> None:
    """Convolution blocks (1-D or 2-D, by the input's rank), each halving every spatial size:
    a stride-2 convolution, or a convolution and 2x max pooling."""
    for filters in planner.cfg.filters:
        if planner.cfg.downsample == "maxpool":
            planner.conv(filters, strides=1)
            *spatial, channels = planner.shape
            pooled = (*(math.ceil(size / 2) for size in spatial), channels)
            planner.add(f"MaxPooling{len(spatial)}D", pooled, pool_size=2, padding="same")
        else:
            planner.conv(filters, strides=2)


def _plan_recurrent(cfg: ModelConfig, input_shape: tuple[int, ...]) -> list[LayerSpec]:
    """Recurrent layers to a dense code; the code repeated over the window's steps, recurrent
    layers again, and a dense layer applied at every step (time-distributed) for the channels."""
    _check_sequence_input(cfg, input_shape)
    planner = _Planner(cfg, input_shape)
    for position, units in enumerate(cfg.encoder):
        planner.recurrent(units, return_sequences=position < len(cfg.encoder) - 1)
    planner.dense(cfg.latent_dim, cfg.latent_activation, name="latent", hidden=False)
    planner.part = "decoder"
    steps, channels = input_shape
    planner.add("RepeatVector", (steps, cfg.latent_dim), n=steps)
    for units in cfg.decoder:
        planner.recurrent(units, return_sequences=True)
    planner.add(
        "Dense",
        (steps, channels),
        planner.shape[-1] * channels + channels,
        "reconstruction",
        units=channels,
        activation=cfg.output_activation,
    )
    return planner.specs


def _check_sequence_input(cfg: ModelConfig, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 2:
        layout = "images" if len(input_shape) == 3 else f"tabular rows of {input_shape[0]} features"
        raise ConfigError(
            f"model.kind: {cfg.kind} needs sequences (steps, channels): windows of a series (data.series) or one "
            f"sequence per row (data.sequences), but this data is {layout}"
        )
    if cfg.kind == "conv1d":
        step = 2 ** len(cfg.filters)
        if input_shape[0] % step:
            raise ConfigError(
                f"model.filters: {len(cfg.filters)} down-sampling blocks cannot be mirrored on windows of "
                f"{input_shape[0]} steps (not divisible by 2^{len(cfg.filters)} = {step}); use fewer blocks or "
                "another data.window.size"
            )


def _check_conv_input(cfg: ModelConfig, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.kind: {cfg.kind} with conv layers needs image data (height, width, channels), but this data "
            f"is tabular with {input_shape[0]} features; use model.kind dense"
        )
    blocks = len(cfg.filters)
    step = 2**blocks
    height, width, _ = input_shape
    if height % step or width % step:
        raise ConfigError(
            f"model.filters: {blocks} down-sampling blocks cannot be mirrored on {height}x{width} inputs "
            f"({height}x{width} is not divisible by 2^{blocks} = {step}); use fewer blocks"
        )


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
            f"reduce model.encoder, model.decoder, model.filters or model.latent_dim"
        )


def build_autoencoder(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    reconstruction_loss: str = "mse",
    mixed_precision: bool = False,
    plan: list[LayerSpec] | None = None,
    text: TextModelInput | None = None,
) -> Autoencoder:
    """Build encoder, decoder and the end-to-end model from `plan` (by default planned here) with
    the functional API; a VAE is a Model subclass whose own loss uses `reconstruction_loss`, mse
    or bce. `mixed_precision`: float16 compute with float32 weights, statistics and output."""
    if cfg.kind == "sequence":
        from aecli.text_models import build_sequence

        assert text is not None
        return build_sequence(cfg, input_shape[0], text.vocabulary, text.noise, text.seed)
    with dtype_policy(mixed_precision):
        return _build(cfg, input_shape, reconstruction_loss, plan or plan_autoencoder(cfg, input_shape))


@dataclass(frozen=True)
class TextModelInput:
    """What a sequence model needs besides its section: the vocabulary size, and the word noise
    (training.noise) it applies to its input while training."""

    vocabulary: int
    noise: NoiseConfig | None = None
    seed: int = 0


@contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[None]:
    """Keras takes a model's dtype policy (and from it, loss scaling at compile) from the global
    setting while layers and models are created or loaded; it is restored afterwards for
    whatever this process builds next (a comparison's next cell)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed_precision else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _build(
    cfg: ModelConfig, input_shape: tuple[int, ...], reconstruction_loss: str, plan: list[LayerSpec]
) -> Autoencoder:
    import keras

    encoder_input = keras.Input(shape=input_shape, name="input")
    encoded = _apply(encoder_input, [spec for spec in plan if spec.part == "encoder"], cfg)
    encoder = keras.Model(encoder_input, encoded, name="encoder")

    code_shape = [spec for spec in plan if spec.part == "encoder"][-1].output_shape
    decoder_input = keras.Input(shape=code_shape, name="code")
    reconstruction = _apply(decoder_input, [spec for spec in plan if spec.part == "decoder"], cfg)
    decoder = keras.Model(decoder_input, reconstruction, name="decoder")

    if cfg.kind == "vae":
        from aecli.layers import VariationalAutoencoder

        vae = VariationalAutoencoder(encoder, decoder, beta=cfg.beta, reconstruction=reconstruction_loss, name="vae")
        vae(keras.ops.zeros((1, *input_shape)))  # build the weights now, so they can be counted and saved
        return Autoencoder(vae, encoder, decoder)
    model = keras.Model(encoder_input, decoder(encoder(encoder_input)), name="autoencoder")
    return Autoencoder(model, encoder, decoder)


# Under mixed precision these stay float32: the code's statistics (KL terms) and the
# reconstruction the loss compares with the input need float32's range and precision.
FLOAT32_LAYERS = frozenset({"z_mean", "z_log_var", "z", "latent", "reconstruction", "reshape"})


def _apply(tensor: Any, specs: list[LayerSpec], cfg: ModelConfig) -> Any:
    import keras

    heads: dict[str, Any] = {}
    trunk = tensor
    for spec in specs:
        options = dict(spec.options)
        if spec.kind in WEIGHTED_KINDS and (cfg.regularization.l1 or cfg.regularization.l2):
            options["kernel_regularizer"] = keras.regularizers.L1L2(cfg.regularization.l1, cfg.regularization.l2)
        if spec.name == "latent":
            options["activity_regularizer"] = _code_regularizer(cfg)
        if spec.name in FLOAT32_LAYERS and keras.config.dtype_policy().name != "float32":
            options["dtype"] = "float32"
        if spec.kind == "Sampling":
            from aecli.layers import Sampling

            return [
                heads["z_mean"],
                heads["z_log_var"],
                Sampling(seed=0, name=spec.name, dtype=options.get("dtype"))([heads["z_mean"], heads["z_log_var"]]),
            ]
        layer = getattr(keras.layers, spec.kind)(name=spec.name, **options)
        if spec.name in ("z_mean", "z_log_var"):
            heads[spec.name] = layer(trunk)
            continue
        trunk = layer(trunk)
    return trunk


def _code_regularizer(cfg: ModelConfig) -> Any:
    import keras

    sparsity = cfg.regularization.sparsity
    if sparsity is not None:
        from aecli.layers import KLSparsity

        return KLSparsity(sparsity.target, sparsity.weight, cfg.regularization.activity_l1)
    if cfg.regularization.activity_l1:
        return keras.regularizers.L1(cfg.regularization.activity_l1)
    return None
