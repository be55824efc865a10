"""Texts too large for memory, streamed to training as shard folders are (data/shards.py).

Before training, one pass over the file counts each part's texts, collects their labels and
adapts the vocabulary on the training texts a block at a time (TextVectorization adapts on
batches from a generator). Every epoch then reads the file again, shuffles its texts in a
bounded buffer and vectorizes each batch inside the tf.data pipeline. Which texts are test,
validation or training texts is decided by a hash of each text's position
(shards.hash_position), so that every pass, the report after training and a later
`aecli evaluate` agree without holding anything per text. At no point is more than a block of
texts, the shuffle buffer and the counts held.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import DataConfig, TextConfig
from aecli.data.arrays import Rows
from aecli.data.files import memory_bytes
from aecli.data.labels import class_mask, encode_labels, label_codes
from aecli.data.scaling import Scaling
from aecli.data.shards import SHUFFLE_BUFFER_BYTES, check_parts_hold_rows, hash_position
from aecli.data.text import (
    IDENTITY,
    MAX_LINE_BYTES,
    TextRows,
    TextSplits,
    check_vectors_fit,
    columns_of,
    text_records,
    vector_width,
)
from aecli.data.vocabulary import Vocabulary
from aecli.errors import DataError

TEXT_BLOCK = 4096  # texts read, assigned to parts and vectorized together
SHUFFLE_TEXTS = 65_536  # texts mixed across blocks at most: a buffer of short sentences would hold a whole epoch
MEMORY_SHARE = 4  # data.text.stream unset: streamed when the vectors would need more than 1/4 of memory
SAMPLED_LINES = 1000  # the first lines, from which a file's count of texts is estimated
MAX_LABELS = 100_000  # more distinct values than this are not classes (an id column, most likely)
BASELINE_TEXTS = 50_000  # a streamed run's training texts that evaluate fits TF-IDF and LSA on, at most
PARTS = ("train", "validation", "test")
EVALUATE_FIX = "evaluate the first N texts of a file instead, with --data FILE --set data.limit=N"

Block = tuple[np.ndarray, list[str | None], list[str | None], np.ndarray]  # texts, labels and ids as written, positions


def streams_texts(cfg: DataConfig) -> bool:
    """data.text.stream, or when unset whether the texts and their vectors (estimated from the
    file's size and its first lines) would need more than a quarter of this machine's memory."""
    assert cfg.text is not None
    if cfg.text.stream is not None:
        return cfg.text.stream
    texts, text_bytes = estimated_texts(cfg)
    return texts * vector_width(cfg.text) * 4 + 3 * text_bytes > memory_bytes() // MEMORY_SHARE


def estimated_texts(cfg: DataConfig) -> tuple[int, int]:
    """About how many texts `cfg` reads (data.limit included) and their bytes, from the file's
    size and its first SAMPLED_LINES lines; (0, 0) for a path that is not a readable file
    (reading it says why)."""
    path = Path(cfg.source)
    try:
        if not path.is_file():
            return 0, 0
        size = path.stat().st_size
        with path.open("rb") as handle:
            lines = [
                len(line)
                for line in itertools.islice(iter(lambda: handle.readline(MAX_LINE_BYTES), b""), SAMPLED_LINES)
            ]
    except OSError:
        return 0, 0
    if not lines:
        return 0, 0
    line_bytes = sum(lines) / len(lines)
    columns = len(cfg.text_column) if isinstance(cfg.text_column, list) else 1
    texts = int(size / line_bytes * columns)
    if cfg.limit is not None:
        texts = min(texts, cfg.limit)
    return texts, int(texts * line_bytes / columns)


def file_stamp(source: str) -> tuple[int, int]:
    try:
        status = Path(source).stat()
    except OSError:
        return (-1, -1)
    return status.st_size, status.st_mtime_ns


def record_blocks(cfg: DataConfig) -> Iterator[Block]:
    """The source's texts (the first data.limit), TEXT_BLOCK at a time, with their positions."""
    records = text_records(cfg.source, columns_of(cfg))
    if cfg.limit is not None:
        records = itertools.islice(records, cfg.limit)
    first = 0
    while block := list(itertools.islice(records, TEXT_BLOCK)):
        texts = np.array([record[0] for record in block], dtype=object)
        labels, ids = [record[1] for record in block], [record[2] for record in block]
        yield texts, labels, ids, np.arange(first, first + len(block))
        first += len(block)


def text_parts(index: np.ndarray, cfg: DataConfig, seed: int) -> np.ndarray:
    """Each text's part, as a position in PARTS: test first, then validation, by a seeded hash."""
    position = hash_position(index, seed)
    validation_end = cfg.test_split + cfg.validation_split * (1 - cfg.test_split)
    return np.where(position < cfg.test_split, 2, np.where(position < validation_end, 1, 0))


@dataclass(frozen=True)
class LabelCodes:
    """Labels as written, to the codes training uses (data.labels.encode_labels over every label)."""

    codes: dict[str, int]
    names: list[str] | None

    @classmethod
    def of(cls, distinct: set[str]) -> LabelCodes:
        cells = sorted(distinct)
        codes, names = encode_labels(cells)
        return cls(dict(zip(cells, codes.tolist(), strict=True)), names)

    def encode(self, labels: list[str | None]) -> np.ndarray:
        return np.array([self.codes[str(label)] for label in labels], np.int64)


@dataclass
class StreamedTexts:
    """A text file seen through a data config, read a block at a time: each part's count, the
    vocabulary adapted on its training texts, and its labels' codes. Used where a ShardedData is."""

    cfg: DataConfig
    seed: int
    vocabulary: Vocabulary
    counts: dict[str, int]  # texts of each part
    labels: LabelCodes | None
    texts: int  # every text read, data.classes's filter aside
    mean_text_bytes: float
    notes: list[str] = field(default_factory=list)
    class_codes: list[int] | None = None
    scaling: Scaling = IDENTITY
    scaled_range: tuple[float, float] = (0.0, 1.0)
    is_image: bool = False
    share: None = None  # a cluster's workers each read the whole file and keep every n-th batch
    stamp: tuple[int, int] = (0, 0)  # the file's size and modification time when it was counted

    @property
    def text(self) -> TextConfig:
        assert self.cfg.text is not None
        return self.cfg.text

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (vector_width(self.text),)

    @property
    def label_names(self) -> list[str] | None:
        return None if self.labels is None else self.labels.names

    @property
    def description(self) -> dict[str, Any]:
        notes = {"notes": self.notes} if self.notes else {}
        return {
            "source": self.cfg.source,
            "source_has_test_split": False,
            "streamed": True,
            "texts": self.texts,
            "vocabulary": len(self.vocabulary.tokens),
            **notes,
        }

    def shapes(self) -> dict[str, Any]:
        return {"sample_shape": list(self.sample_shape), **self.counts, "labelled": self.labels is not None}

    def text_blocks(self, part: str, rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, Any, Any]]:
        """The texts of `part` in file order, a block at a time, with their label codes (or None)
        and positions; `rng` shuffles each block's texts."""
        wanted = PARTS.index(part)
        self.check_unchanged()
        for texts, labels, _, index in self.checked_blocks():
            keep = text_parts(index, self.cfg, self.seed) == wanted
            y = None if self.labels is None else self.labels.encode(labels)
            if self.class_codes is not None and part != "test" and y is not None:
                keep &= np.isin(y, self.class_codes)
            if not keep.any():
                continue
            order = np.flatnonzero(keep)
            if rng is not None:
                order = rng.permutation(order)
            yield texts[order], None if y is None else y[order], index[order]

    def checked_blocks(self) -> Iterator[Block]:
        """record_blocks, and then a check that the file did not change while it was read."""
        yield from record_blocks(self.cfg)
        self.check_unchanged()

    def check_unchanged(self) -> None:
        """Every pass must see the texts the first one counted (an epoch's batches are counted)."""
        if file_stamp(self.cfg.source) != self.stamp:
            raise DataError(
                f"data.source {self.cfg.source} changed while training read it (its size or modification time); "
                "train again once it is complete"
            )

    def batches(self, part: str, batch_size: int | None = None) -> Iterator[tuple[np.ndarray, Any, np.ndarray]]:
        """Vectorized blocks of `part` in file order, with label codes and positions (the report);
        blocks of TEXT_BLOCK texts whatever `batch_size` (ShardedData's)."""
        from aecli.vectorizer import vectorize, vectorizer_function

        vectors = vectorizer_function(self.text, self.vocabulary)
        for texts, y, index in self.text_blocks(part):
            yield vectorize(texts, self.text, self.vocabulary, vectors), y, index

    def tf_texts(self, part: str, shuffle: bool, seed: int) -> Any:
        """The texts of `part` as a tf.data pipeline of strings: read afresh every epoch, and with
        `shuffle` mixed within blocks and across them in a buffer of SHUFFLE_BUFFER_BYTES of text
        (SHUFFLE_TEXTS texts at most)."""
        tf = import_tensorflow()
        epochs = itertools.count()  # from_generator calls `blocks` afresh every epoch

        def blocks() -> Iterator[np.ndarray]:
            rng = np.random.default_rng([seed, next(epochs)]) if shuffle else None
            for texts, _, _ in self.text_blocks(part, rng):
                yield texts  # an object array: each text its own length

        texts = tf.data.Dataset.from_generator(blocks, output_signature=tf.TensorSpec((None,), tf.string)).unbatch()
        if shuffle:
            buffer = min(SHUFFLE_TEXTS, max(TEXT_BLOCK, int(SHUFFLE_BUFFER_BYTES / max(self.mean_text_bytes, 1.0))))
            texts = texts.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        return texts

    def vectorizer(self) -> Any:
        """A batch of strings to float32 model inputs, in TensorFlow (inside tf.data on every backend)."""
        from aecli.vectorizer import vectorizer_function

        return vectorizer_function(self.text, self.vocabulary)


@dataclass
class _Tally:
    """What the pass before training learns besides the vocabulary."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(PARTS), np.int64))
    labels: set[str] = field(default_factory=set)
    texts: int = 0
    text_bytes: int = 0
    longer: int = 0  # token outputs: texts cut to data.text.sequence_length
    complete: bool = False  # the whole file was read

    def add(
        self, texts: np.ndarray, labels: list[str | None], parts: np.ndarray, text: TextConfig, labelled: bool
    ) -> None:
        from aecli.vectorizer import token_counts

        self.counts += np.bincount(parts[parts >= 0], minlength=len(PARTS))
        self.texts += len(texts)
        self.text_bytes += sum(len(t) for t in texts)
        if labelled:
            self.labels.update(str(label) for label in labels)
            if len(self.labels) > MAX_LABELS:
                raise DataError(f"data.label_column: over {MAX_LABELS:,} distinct labels; not classes")
        if text.output == "tokens":
            self.longer += int((token_counts(texts, text) > text.sequence_length).sum())


def open_streamed_texts(cfg: DataConfig, seed: int, share: Any = None) -> StreamedTexts:
    """One pass over the file: count each part's texts, collect the labels, and adapt the
    vocabulary on the training texts (or read data.text.vocabulary). `share` is accepted for
    the source-kind interface: a cluster's workers each read the whole file."""
    from aecli.vectorizer import adapt_vocabulary

    text = cfg.text
    assert text is not None
    labels, class_codes = _classes(cfg) if cfg.classes is not None else (None, None)
    tally = _Tally()
    stamp = file_stamp(cfg.source)

    def training_texts(tally: _Tally | None) -> Iterator[np.ndarray]:
        for texts, found, _, index in record_blocks(cfg):
            parts = text_parts(index, cfg, seed)
            if labels is not None and class_codes is not None:  # data.classes keeps its training texts
                parts[(parts != 2) & ~np.isin(labels.encode(found), class_codes)] = -1
            if tally is not None:
                tally.add(texts, found, parts, text, cfg.label_column is not None)
            if (parts == 0).any():
                yield texts[parts == 0]
        if tally is not None:
            tally.complete = True

    if text.vocabulary is not None:
        vocabulary = Vocabulary.read(text.vocabulary)
        for _ in training_texts(tally):
            pass
    else:  # tf_idf's document counts take a second pass, over the training texts only
        try:
            vocabulary = adapt_vocabulary(training_texts(tally), text, lambda: training_texts(None))
        except DataError:  # read to the end but no words: an empty split says why better, when it is one
            if tally.complete:
                _check_parts(cfg, dict(zip(PARTS, tally.counts.tolist(), strict=True)), tally.texts)
            raise
    counts = dict(zip(PARTS, tally.counts.tolist(), strict=True))
    _check_parts(cfg, counts, tally.texts)
    if labels is None and cfg.label_column is not None:
        labels = LabelCodes.of(tally.labels)
    notes = []
    if tally.longer:
        notes.append(
            f"{tally.longer} of {tally.texts} texts have more than data.text.sequence_length "
            f"({text.sequence_length}) tokens: their first {text.sequence_length} are used"
        )
    mean_bytes = tally.text_bytes / max(tally.texts, 1)
    found = StreamedTexts(cfg, seed, vocabulary, counts, labels, tally.texts, mean_bytes, notes, class_codes)
    found.stamp = stamp
    found.check_unchanged()  # the same texts in every pass: changed during this one, it counted others
    return found


def _classes(cfg: DataConfig) -> tuple[LabelCodes, list[int]]:
    """data.classes needs the labels' codes before the pass that adapts the vocabulary: a pass
    over the labels alone comes first."""
    if cfg.label_column is None:
        raise DataError("data.classes: the source has no labels to filter on")
    distinct: set[str] = set()
    for _, found, _, _ in record_blocks(cfg):
        distinct.update(str(label) for label in found)
        if len(distinct) > MAX_LABELS:
            raise DataError(f"data.label_column: over {MAX_LABELS:,} distinct labels; not classes")
    labels = LabelCodes.of(distinct)
    assert cfg.classes is not None
    class_mask(np.array(list(labels.codes.values())), cfg.classes, labels.names)  # says when none is present
    return labels, label_codes(cfg.classes, labels.names, "data.classes")


def _check_parts(cfg: DataConfig, counts: dict[str, int], texts: int) -> None:
    if texts < 3:
        raise DataError(f"data.source {cfg.source}: {texts} texts are too few to split off a test set")
    check_parts_hold_rows(cfg, counts)


def split_streamed_texts(cfg: DataConfig, seed: int) -> TextSplits:
    """The test texts of a streamed run, and its first BASELINE_TEXTS training texts (what
    evaluate fits its baselines on), as training assigned them; refused when the test texts'
    vectors would not fit in memory."""
    kept: dict[str, list[Block]] = {"train": [], "test": []}
    held, labels = 0, set[str]()
    for block in record_blocks(cfg):
        parts = text_parts(block[3], cfg, seed)
        labels.update(str(label) for label in block[1] if label is not None)
        kept["test"].append(_where(block, parts == 2))
        held += len(kept["test"][-1][0])
        check_vectors_fit(held, _text(cfg), "the test split", EVALUATE_FIX)
        if sum(len(train[0]) for train in kept["train"]) < BASELINE_TEXTS:
            kept["train"].append(_where(block, parts == 0))
    codes = LabelCodes.of(labels) if cfg.label_column is not None else None
    rows = {name: _rows(blocks, codes, cfg.id_column is not None) for name, blocks in kept.items()}
    if cfg.classes is not None and codes is not None:
        rows["train"] = rows["train"].where(class_mask(rows["train"].y, cfg.classes, codes.names))
    found = TextRows(np.empty(0, dtype=object), None, None, np.empty(0, np.int64))  # not kept: too many
    return TextSplits(found, rows, None if codes is None else codes.names)


def _where(block: Block, keep: np.ndarray) -> Block:
    texts, labels, ids, index = block
    at = np.flatnonzero(keep)
    return texts[at], [labels[i] for i in at], [ids[i] for i in at], index[at]


def _rows(blocks: list[Block], codes: LabelCodes | None, with_ids: bool) -> Rows:
    texts = np.concatenate([block[0] for block in blocks]) if blocks else np.empty(0, dtype=object)
    positions = np.concatenate([block[3] for block in blocks]) if blocks else np.empty(0, np.int64)
    y = None if codes is None else codes.encode([label for block in blocks for label in block[1]])
    ids = np.array([i for block in blocks for i in block[2]], dtype=object) if with_ids else None
    return Rows(texts, y, positions, ids)


def _text(cfg: DataConfig) -> TextConfig:
    assert cfg.text is not None
    return cfg.text
