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


def text_vectorization(
    text: TextConfig, vocabulary: Vocabulary | None = None, name: str = "vectorizer", sparse: bool = False
) -> Any:
    """The TextVectorization layer `text` describes, with `vocabulary` when given (else to adapt);
    `sparse`: bags of words as a tf.SparseTensor (TensorFlow only)."""
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
        options |= {"ngrams": text.ngrams if text.ngrams > 1 else None, "pad_to_max_tokens": True, "sparse": sparse}
    if vocabulary is not None:
        room = text.max_tokens - (2 if tokens else 1)  # padding and [UNK] take their places
        if len(vocabulary.tokens) > room:
            raise DataError(
                f"data.text.vocabulary: {len(vocabulary.tokens):,} tokens do not fit data.text.max_tokens "
                f"{text.max_tokens:,} (room for {room:,} besides padding and [UNK])"
            )
        options["vocabulary"] = vocabulary.tokens
        if text.output == "tf_idf":
            if vocabulary.idf is None:
                raise DataError("data.text.vocabulary: has no idf weights, which output tf_idf needs")
            options["idf_weights"] = vocabulary.idf
    return keras.layers.TextVectorization(**options)


def adapt_vocabulary(texts: np.ndarray, text: TextConfig) -> Vocabulary:
    """The vocabulary (and idf weights) of `texts`, the most frequent tokens first."""
    tf = import_tensorflow()
    batches = tf.data.Dataset.from_tensor_slices(texts.astype(str)).batch(VECTORIZE_BATCH)
    layer = text_vectorization(text)
    try:
        layer.adapt(batches)
        tokens = [str(token) for token in layer.get_vocabulary() if token not in SPECIAL_TOKENS]
    except AttributeError:  # Keras's tf_idf adapt fails outright on texts without a single word
        tokens = []
    if len(tokens) < 2:
        raise DataError(
            f"data.source: the training texts hold {len(tokens)} distinct word(s) after data.text.standardize "
            f"{text.standardize!r}; a vocabulary needs at least 2"
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


def sparse_bags(text: TextConfig, vocabulary: Vocabulary) -> Any:
    """On TensorFlow, for bag-of-words outputs: a function from texts to a scipy CSR matrix equal
    to `vectorize`'s rows (counts or presence from a sparse TextVectorization, times the idf
    weights for tf_idf); None elsewhere. A sentence has a dozen words of 10,000: kept sparse,
    encoding them costs a dozen rows of the first layer's kernel instead of all of them."""
    if keras.backend.backend() != "tensorflow" or text.output == "tokens":
        return None
    import scipy.sparse

    tf = import_tensorflow()
    # Keras's sparse tf_idf output fails (a GatherNd rank error): counts, weighted here
    mode = {"output": "multi_hot" if text.output == "multi_hot" else "count"}
    counts = text_vectorization(text.model_copy(update=mode), vocabulary, sparse=True)
    weights = None
    if text.output == "tf_idf":
        assert vocabulary.idf is not None  # Keras gives [UNK] the mean idf
        weights = np.zeros(text.max_tokens, np.float32)  # columns past a small vocabulary stay empty
        weights[: len(vocabulary.idf) + 1] = np.concatenate([[vocabulary.idf.mean()], vocabulary.idf])

    def bags(texts: list[str]) -> Any:
        found = counts(tf.constant(texts))
        rows, columns = found.indices.numpy().T
        matrix = scipy.sparse.csr_matrix((found.values.numpy(), (rows, columns)), shape=(len(texts), text.max_tokens))
        return matrix if weights is None else matrix.multiply(weights[None, :]).tocsr()

    return bags


# Keras's lower_and_strip_punctuation strips these (keras.layers.TextVectorization's default)
STRIPPED = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'


def token_counts(texts: np.ndarray, text: TextConfig) -> np.ndarray:
    """How many tokens each text has after standardization (before any cut to sequence_length),
    with TensorFlow's string ops: no padded batch, however long one text is."""
    tf = import_tensorflow()
    counts = []
    for start in range(0, len(texts), VECTORIZE_BATCH):
        batch = tf.constant(texts[start : start + VECTORIZE_BATCH].astype(str))
        if text.standardize in ("lower", "lower_and_strip_punctuation"):
            batch = tf.strings.lower(batch)
        if text.standardize in ("strip_punctuation", "lower_and_strip_punctuation"):
            batch = tf.strings.regex_replace(batch, STRIPPED, "")
        counts.append(tf.strings.split(batch).row_lengths().numpy())
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
