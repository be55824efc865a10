"""Sequence autoencoders of texts: token ids -> word embeddings -> an encoder (GRU/LSTM, either
way or both, or Transformer blocks) -> pooling to one sentence vector, the code -> a decoder
that sees only that vector and the previous target tokens (a GRU started from it, or
Transformer blocks attending to it) -> logits over the vocabulary for every position.

TSDAE-style denoising corrupts the encoder's input only (`WordNoise`, inside the model, so the
draws are fresh every step on every backend); the decoder reconstructs the clean sentence.
"""

from __future__ import annotations

from typing import Any

import keras

from aecli.config import ModelConfig, NoiseConfig
from aecli.model_parts import Autoencoder
from aecli.text_layers import PositionEmbedding, SequencePooling, VariationalCode, WordNoise


def build_sequence(
    cfg: ModelConfig, length: int, vocabulary: int, noise: NoiseConfig | None, word_noise_seed: int = 0
) -> Autoencoder:
    encoder = _encoder(cfg, length, vocabulary)
    decoder = _decoder(cfg, length, vocabulary)
    tokens = keras.Input(shape=(length,), name="tokens")
    corrupted = tokens if noise is None else WordNoise(noise.kind, noise.amount, word_noise_seed, name="noise")(tokens)
    model = keras.Model(tokens, decoder([encoder(corrupted), tokens]), name="autoencoder")
    return Autoencoder(model, encoder, decoder)


def _encoder(cfg: ModelConfig, length: int, vocabulary: int) -> Any:
    tokens = keras.Input(shape=(length,), name="tokens")
    states = keras.layers.Embedding(vocabulary, cfg.embedding_dim, mask_zero=True, name="embedding")(tokens)
    if cfg.cell == "transformer":
        states = PositionEmbedding(length, name="positions")(states)
        for number, units in enumerate(cfg.encoder, 1):
            states = _block(states, None, cfg, units, f"encoder_block_{number}")
    else:
        layer = keras.layers.GRU if cfg.cell == "gru" else keras.layers.LSTM
        for number, units in enumerate(cfg.encoder, 1):
            recurrent = layer(units, return_sequences=True, name=f"encoder_{cfg.cell}_{number}")
            if cfg.bidirectional:
                recurrent = keras.layers.Bidirectional(recurrent, name=f"encoder_bidirectional_{number}")
            states = recurrent(states)
    pooled = SequencePooling(cfg.pooling, name="pooling")([states, tokens])
    if cfg.variational:
        z_mean = keras.layers.Dense(cfg.latent_dim, name="z_mean")(pooled)
        z_log_var = keras.layers.Dense(cfg.latent_dim, name="z_log_var")(pooled)
        code = VariationalCode(cfg.beta, length, cfg.beta_warmup_steps, name="z")([z_mean, z_log_var])
        return keras.Model(tokens, code, name="encoder")
    code = keras.layers.Dense(cfg.latent_dim, activation=cfg.latent_activation, name="latent")(pooled)
    return keras.Model(tokens, code, name="encoder")


def _decoder(cfg: ModelConfig, length: int, vocabulary: int) -> Any:
    """[code, target tokens] -> logits: position t sees the code and the target's tokens before t."""
    code = keras.Input(shape=(cfg.latent_dim,), name="code")
    targets = keras.Input(shape=(length,), name="targets")
    previous = targets
    if cfg.word_dropout:
        previous = WordNoise("word_mask", cfg.word_dropout, name="word_dropout")(previous)
    words = keras.layers.Embedding(vocabulary, cfg.embedding_dim, name="decoder_embedding")(previous)
    words = keras.layers.ZeroPadding1D((1, 0), name="start")(words)  # a zero vector starts every sentence
    states = keras.layers.Cropping1D((0, 1), name="shift")(words)
    if cfg.decoder_cell == "transformer":
        states = PositionEmbedding(length, name="decoder_positions")(states)
        memory = keras.layers.Dense(cfg.embedding_dim, name="memory")(code)
        memory = keras.layers.Reshape((1, cfg.embedding_dim), name="memory_sequence")(memory)
        for number, units in enumerate(cfg.decoder, 1):
            states = _block(states, memory, cfg, units, f"decoder_block_{number}")
    else:
        states = keras.layers.Concatenate(name="with_code")([states, keras.layers.RepeatVector(length)(code)])
        for number, units in enumerate(cfg.decoder, 1):
            start = keras.layers.Dense(units, activation="tanh", name=f"decoder_start_{number}")(code)
            gru = keras.layers.GRU(units, return_sequences=True, name=f"decoder_gru_{number}")
            states = gru(states, initial_state=start)
    logits = keras.layers.Dense(vocabulary, name="reconstruction", dtype="float32")(states)
    return keras.Model([code, targets], logits, name="decoder")


def _block(states: Any, memory: Any, cfg: ModelConfig, units: int, name: str) -> Any:
    """A post-norm Transformer block of built-in layers: self-attention (causal in the decoder),
    attention to the code (decoder), then a feed-forward layer of `units`."""
    width = cfg.embedding_dim
    attention = keras.layers.MultiHeadAttention(cfg.heads, width // cfg.heads, name=f"{name}_attention")
    attended = attention(states, states, use_causal_mask=memory is not None)
    states = keras.layers.LayerNormalization(name=f"{name}_norm_1")(keras.layers.Add()([states, attended]))
    if memory is not None:
        cross = keras.layers.MultiHeadAttention(cfg.heads, width // cfg.heads, name=f"{name}_cross")(states, memory)
        states = keras.layers.LayerNormalization(name=f"{name}_norm_cross")(keras.layers.Add()([states, cross]))
    hidden = keras.layers.Dense(units, activation=cfg.activation, name=f"{name}_hidden")(states)
    hidden = keras.layers.Dense(width, name=f"{name}_output")(hidden)
    return keras.layers.LayerNormalization(name=f"{name}_norm_2")(keras.layers.Add()([states, hidden]))
