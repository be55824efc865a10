"""Texts to model inputs with Keras's TextVectorization: adapted on a run's training texts,
rebuilt from its saved vocabulary for any later input, and placed in front of the saved
encoder on TensorFlow so that it embeds raw strings.

TensorFlow is imported inside the functions: the data layer reads texts without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
    text: TextConfig,
    vocabulary: Vocabulary | None = None,
    name: str = "vectorizer",
    sparse: bool = False,
    whole: bool = False,
) -> Any:
    """The TextVectorization layer `text` describes, with `vocabulary` when given (else to adapt);
    `sparse`: bags of words as a tf.SparseTensor (TensorFlow only); `whole`: token ids of every
    word, not cut to sequence_length: ragged (a long text costs its own length), or with n-grams
    (which Keras's ragged output leaves out) padded to the batch's longest text."""
    import_tensorflow()
    tokens = text.output == "tokens"
    options: dict[str, Any] = {
        "max_tokens": text.max_tokens,
        "standardize": None if text.standardize == "none" else text.standardize,
        "output_mode": "int" if tokens else text.output,
        "name": name,
    }
    if tokens:
        if not whole:
            options["output_sequence_length"] = text.sequence_length
        elif text.ngrams == 1:
            options["ragged"] = True
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


def string_tensor(texts: Any) -> Any:
    """Texts as a tf.string tensor, each of its own length: through a numpy object array, never
    numpy's fixed-width str (which pads every text to the longest: 4,096 texts with one of
    1.5 MB took 24 GB)."""
    tf = import_tensorflow()
    return tf.constant(np.asarray(texts, dtype=object))


def adapt_vocabulary(
    texts: np.ndarray | Iterable[np.ndarray], text: TextConfig, again: Callable[[], Iterable[np.ndarray]] | None = None
) -> Vocabulary:
    """The vocabulary (and idf weights) of `texts`, the most frequent tokens first: an array, or
    blocks of texts from a file read once, and for tf_idf read `again` for the document counts.

    The vocabulary comes from adapting in count mode, and the idf weights from the multi-hot
    bags of the adapted vocabulary, with Keras's formula: Keras's own tf_idf adapt dedups every
    text in a Python loop, 90 times slower (37 s for 115,000 sentences, against 0.4 s)."""
    layer = text_vectorization(text.model_copy(update={"output": "count"}) if text.output == "tf_idf" else text)
    try:
        layer.adapt(string_tensor(block) for block in _blocks(texts))
        tokens = [str(token) for token in layer.get_vocabulary() if token not in SPECIAL_TOKENS]
    except AttributeError:  # Keras's adapt fails outright on texts without a single word
        tokens = []
    if len(tokens) < 2:
        raise DataError(
            f"data.source: the training texts hold {len(tokens)} distinct word(s) after data.text.standardize "
            f"{text.standardize!r}; a vocabulary needs at least 2"
        )
    if text.output != "tf_idf":
        return Vocabulary(tokens, None)
    assert isinstance(texts, np.ndarray) or again is not None
    return Vocabulary(tokens, inverse_document_frequency(_blocks(texts if again is None else again()), text, tokens))


def _blocks(texts: np.ndarray | Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    if not isinstance(texts, np.ndarray):
        return texts
    return (texts[start : start + VECTORIZE_BATCH] for start in range(0, len(texts), VECTORIZE_BATCH))


def inverse_document_frequency(blocks: Iterable[np.ndarray], text: TextConfig, tokens: list[str]) -> np.ndarray:
    """Each token's idf over the texts of `blocks`, as Keras's tf_idf adapt computes it:
    log(1 + texts / (1 + texts holding the token)); from each text's distinct token ids."""
    tf = import_tensorflow()
    ids = bag_token_ids(text, Vocabulary(tokens, None))
    width = text.max_tokens + 1
    holding = np.zeros(width, np.int64)
    documents = 0
    for block in blocks:
        found = ids(string_tensor(block))
        if isinstance(found, tf.RaggedTensor):
            keys = found.value_rowids() * width + tf.cast(found.flat_values, tf.int64)
        else:  # n-grams: padded with id 0
            found = tf.cast(found, tf.int64)
            keys = tf.boolean_mask(tf.range(len(block), dtype=tf.int64)[:, None] * width + found, found > 0)
        holding += np.bincount(tf.unique(keys)[0].numpy() % width, minlength=width)  # once per text
        documents += len(block)
    return np.log1p(documents / (1.0 + holding[2 : 2 + len(tokens)])).astype(np.float32)


def bag_token_ids(text: TextConfig, vocabulary: Vocabulary) -> Any:
    """The token ids of every word (and n-gram) of a batch of texts (text_vectorization's
    `whole`). Int mode numbers the words from 2 (0 pads, 1 is [UNK]), bags from 1 ([UNK] is 0):
    one id more, so max_tokens + 1 of them."""
    update = {"output": "tokens", "max_tokens": text.max_tokens + 1}
    return text_vectorization(text.model_copy(update=update), vocabulary, whole=True)


def vectorize(texts: np.ndarray, text: TextConfig, vocabulary: Vocabulary, vectors: Any = None) -> np.ndarray:
    """Float32 model inputs, one row per text (token ids are exact in float32 below 2^24), in a
    buffer the training pipeline uses without a copy. `vectors`: vectorizer_function's, built
    once by a caller that vectorizes block after block (building one costs a trace)."""
    vectors = vectors or vectorizer_function(text, vocabulary)
    width = text.sequence_length if text.output == "tokens" else text.max_tokens
    out = aligned_empty((len(texts), width), np.dtype(np.float32))
    for start in range(0, len(texts), VECTORIZE_BATCH):
        batch = string_tensor(texts[start : start + VECTORIZE_BATCH])
        out[start : start + len(batch)] = vectors(batch).numpy()
    return out


def vectorizer_function(text: TextConfig, vocabulary: Vocabulary) -> Any:
    """A TensorFlow function from a batch of strings to float32 model inputs (for `vectorize`
    and streamed texts' tf.data pipeline, on every backend).

    Bags of single words are counted from the token ids (TextVectorization in int mode, then a
    bincount) and weighted by the idf: the same numbers as TextVectorization's own dense bags,
    which it builds 7 times slower (0.39 s against 0.056 s for 4,096 sentences over 10,000
    words: a third of each streamed epoch went there)."""
    tf = import_tensorflow()
    strings = [tf.TensorSpec((None,), tf.string)]  # one trace for every batch size
    if text.output == "tokens" or text.ngrams > 1:  # n-grams: Keras's own bags (see text_vectorization)
        layer = text_vectorization(text, vocabulary)
        return tf.function(lambda batch: tf.cast(layer(batch), tf.float32), input_signature=strings)
    ids = bag_token_ids(text, vocabulary)
    weights = tf.constant(
        idf_columns(text, vocabulary) if text.output == "tf_idf" else np.ones(text.max_tokens, np.float32)
    )
    width = text.max_tokens + 1

    def bags(batch: Any) -> Any:
        counts = tf.math.bincount(
            tf.cast(ids(batch), tf.int32), minlength=width, maxlength=width, axis=-1, dtype=tf.float32
        )
        counts = tf.reshape(counts, (-1, width))[:, 1:]  # the shape bincount leaves unknown; column 0: no word
        return tf.minimum(counts, 1.0) if text.output == "multi_hot" else counts * weights

    return tf.function(bags, input_signature=strings)


def idf_columns(text: TextConfig, vocabulary: Vocabulary) -> np.ndarray:
    """The idf weight of every bag column: [UNK]'s is the mean (as Keras gives it), columns past
    a small vocabulary are 0."""
    assert vocabulary.idf is not None
    weights = np.zeros(text.max_tokens, np.float32)
    weights[: len(vocabulary.idf) + 1] = np.concatenate([[vocabulary.idf.mean()], vocabulary.idf])
    return weights


def sparse_bags(text: TextConfig, vocabulary: Vocabulary) -> Any:
    """On TensorFlow, for bag-of-words outputs: a function from texts to a scipy CSR matrix equal
    to `vectorize`'s rows (counts or presence from a sparse TextVectorization, times the idf
    weights for tf_idf); None elsewhere. A sentence has a dozen words of 10,000: kept sparse,
    encoding them costs a dozen rows of the first layer's kernel instead of all of them."""
    if keras.backend.backend() != "tensorflow" or text.output == "tokens":
        return None
    import scipy.sparse

    # Keras's sparse tf_idf output fails (a GatherNd rank error): counts, weighted here
    mode = {"output": "multi_hot" if text.output == "multi_hot" else "count"}
    counts = text_vectorization(text.model_copy(update=mode), vocabulary, sparse=True)
    weights = idf_columns(text, vocabulary) if text.output == "tf_idf" else None

    def bags(texts: list[str]) -> Any:
        found = counts(string_tensor(texts))
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
        batch = string_tensor(texts[start : start + VECTORIZE_BATCH])
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
