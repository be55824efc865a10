"""The layer plan of a sequence (text) autoencoder: shapes and parameter counts, without Keras,
for `aecli validate` and the memory check (text_models.py builds what it describes)."""

from __future__ import annotations

from aecli.config import ModelConfig
from aecli.errors import ConfigError
from aecli.model_parts import LayerSpec

RECURRENT_GATES = {"gru": 3, "lstm": 4}


def plan_sequence(cfg: ModelConfig, input_shape: tuple[int, ...], vocabulary: int | None) -> list[LayerSpec]:
    """The layers of a sequence autoencoder with their output shapes and parameter counts."""
    if len(input_shape) != 1 or vocabulary is None:
        raise ConfigError("model.kind: sequence models read token ids of texts (data.text with output tokens)")
    length, width = input_shape[0], cfg.embedding_dim
    specs: list[LayerSpec] = [LayerSpec("encoder", "embedding", "Embedding", (length, width), vocabulary * width)]
    if cfg.cell == "transformer":
        specs.append(LayerSpec("encoder", "positions", "PositionEmbedding", (length, width), length * width))
        specs += [_transformer_block("encoder", n, length, width, units) for n, units in enumerate(cfg.encoder, 1)]
    else:
        gates, sides = RECURRENT_GATES[cfg.cell], 2 if cfg.bidirectional else 1
        for n, units in enumerate(cfg.encoder, 1):
            biases = 2 * units if cfg.cell == "gru" else units
            parameters = sides * gates * (units * (width + units) + biases)
            width = sides * units
            specs.append(LayerSpec("encoder", f"encoder_{cfg.cell}_{n}", cfg.cell.upper(), (length, width), parameters))
    specs.append(LayerSpec("encoder", "pooling", "SequencePooling", (width,), options={"mode": cfg.pooling}))
    heads = ("z_mean", "z_log_var") if cfg.variational else ("latent",)
    for name in heads:
        specs.append(LayerSpec("encoder", name, "Dense", (cfg.latent_dim,), width * cfg.latent_dim + cfg.latent_dim))
    width = cfg.embedding_dim
    specs.append(LayerSpec("decoder", "decoder_embedding", "Embedding", (length, width), vocabulary * width))
    if cfg.decoder_cell == "transformer":
        specs.append(LayerSpec("decoder", "decoder_positions", "PositionEmbedding", (length, width), length * width))
        memory = cfg.latent_dim * width + width
        specs.append(LayerSpec("decoder", "memory", "Dense", (1, width), memory))
        specs += [_transformer_block("decoder", n, length, width, units) for n, units in enumerate(cfg.decoder, 1)]
    else:
        width += cfg.latent_dim  # each step's input: the previous word and the code
        for n, units in enumerate(cfg.decoder, 1):
            start = cfg.latent_dim * units + units
            specs.append(LayerSpec("decoder", f"decoder_start_{n}", "Dense", (units,), start))
            gru = 3 * (units * (width + units) + 2 * units)
            specs.append(LayerSpec("decoder", f"decoder_gru_{n}", "GRU", (length, units), gru))
            width = units
    logits = width * vocabulary + vocabulary
    specs.append(LayerSpec("decoder", "reconstruction", "Dense", (length, vocabulary), logits))
    return specs


def _transformer_block(part: str, number: int, length: int, width: int, units: int) -> LayerSpec:
    attention = 4 * (width * width + width)
    cross = attention + 2 * width if part == "decoder" else 0  # attention to the code, and its norm
    feed_forward = width * units + units + units * width + width
    parameters = attention + cross + feed_forward + 4 * width
    return LayerSpec(part, f"{part}_block_{number}", "TransformerBlock", (length, width), parameters)
