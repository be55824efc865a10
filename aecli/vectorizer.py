"""Texts to model inputs with Keras's TextVectorization: adapted on a run's training texts,
rebuilt from its saved vocabulary for any later input, and placed in front of the saved
encoder on TensorFlow so that it embeds raw strings.

TensorFlow is imported inside the functions: the data layer reads texts without it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import TextConfig
from aecli.data.scaling import aligned_empty
from aecli.data.vocabulary import Vocabulary
from aecli.errors import DataError

VECTORIZE_BATCH = 4096  # texts per TextVectorization call: large enough to amortize the call
SPECIAL_TOKENS = ("", "[UNK]")  # Keras's padding (token outputs only) and out-of-vocabulary entries


def text_vectorization(text: TextConfig, vocabulary: Vocabulary | None = None, name: str = "vectorizer") -> Any:
    """The TextVectorization layer `text` describes, with `vocabulary` when given (else to adapt)."""
    import_tensorflow()
    tokens = text.output == "tokens"
    options: dict[str, Any] = {
        "max_tokens": text.max_tokens,
        "standardize": None if text.standardize == "none" else text.standardize,
        "output_mode": "int" if tokens else text.output,
        "name": name,
    }
    if tokens:
        options["output_sequence_length"] = text.sequence_length
    else:
        options |= {"ngrams": text.ngrams if text.ngrams > 1 else None, "pad_to_max_tokens": True}
    if vocabulary is not None:
        options["vocabulary"] = vocabulary.tokens
        if text.output == "tf_idf":
            if vocabulary.idf is None:
                raise DataError("data.text.vocabulary: has no idf weights, which output tf_idf needs")
            options["idf_weights"] = vocabulary.idf
    return keras.layers.TextVectorization(**options)


def adapt_vocabulary(texts: np.ndarray, text: TextConfig) -> Vocabulary:
    """The vocabulary (and idf weights) of `texts`, the most frequent tokens first."""
    tf = import_tensorflow()
    layer = text_vectorization(text)
    layer.adapt(tf.data.Dataset.from_tensor_slices(texts.astype(str)).batch(VECTORIZE_BATCH))
    tokens = [str(token) for token in layer.get_vocabulary() if token not in SPECIAL_TOKENS]
    if len(tokens) < 2:
        raise DataError(
            f"data.source: the training texts hold {len(tokens)} distinct word(s) after data.text.standardize; "
            "a vocabulary needs at least 2"
        )
    idf = None
    if text.output == "tf_idf":
        weights = np.asarray(layer._lookup_layer.idf_weights_const, np.float32)  # Keras keeps no public accessor
        idf = weights[1 : 1 + len(tokens)]  # entry 0 is [UNK]'s
    return Vocabulary(tokens, idf)


def vectorize(texts: np.ndarray, text: TextConfig, vocabulary: Vocabulary) -> np.ndarray:
    """Float32 model inputs, one row per text (token ids are exact in float32 below 2^24), in a
    buffer the training pipeline uses without a copy."""
    tf = import_tensorflow()
    layer = text_vectorization(text, vocabulary)
    width = text.sequence_length if text.output == "tokens" else text.max_tokens
    out = aligned_empty((len(texts), width), np.dtype(np.float32))
    for start in range(0, len(texts), VECTORIZE_BATCH):
        batch = tf.constant(texts[start : start + VECTORIZE_BATCH].astype(str))
        out[start : start + len(batch)] = np.asarray(layer(batch), np.float32)
    return out


def token_counts(texts: np.ndarray, text: TextConfig) -> np.ndarray:
    """How many tokens each text has after standardization (before any cut to sequence_length)."""
    tf = import_tensorflow()
    standardize = None if text.standardize == "none" else text.standardize
    layer = keras.layers.TextVectorization(standardize=standardize, output_mode="int", vocabulary=["a"], ragged=True)
    counts = [
        np.asarray(layer(tf.constant(texts[start : start + VECTORIZE_BATCH].astype(str))).row_lengths())
        for start in range(0, len(texts), VECTORIZE_BATCH)
    ]
    return np.concatenate(counts) if counts else np.zeros(0, np.int64)


def decode_tokens(ids: np.ndarray, vocabulary: Vocabulary) -> list[str]:
    """Token id rows back to text: padding dropped, unknown words as [UNK]."""
    table = np.array(["", "[UNK]", *vocabulary.tokens], dtype=object)
    rows = []
    for row in np.asarray(ids, np.int64):
        words = [str(table[i]) if 0 <= i < len(table) else "[UNK]" for i in row if i != 0]
        rows.append(" ".join(words))
    return rows


def string_encoder(encoder: Any, text: TextConfig, vocabulary: Vocabulary) -> Any:
    """`encoder` behind the run's TextVectorization: a model from a batch of raw strings to
    their codes (TensorFlow only: the layer runs in TensorFlow)."""
    strings = keras.Input(shape=(), dtype="string", name="text")
    vectors = text_vectorization(text, vocabulary)(strings)
    return keras.Model(strings, encoder(vectors), name="text_encoder")
