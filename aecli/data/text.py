"""Texts: one per line (.txt), a column of a .csv/.tsv with a header row, or a key of JSON Lines
records (.jsonl), each with an optional label and id; vectorized by the run's TextVectorization
(vectorizer.py), adapted on the training split only.

Every failure is one line naming the file and line: binary or non-UTF-8 content, an empty text,
a missing column or key. Nothing is written here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aecli.config import DataConfig, TextConfig
from aecli.data.arrays import Dataset, RawData, Rows, Samples
from aecli.data.files import column_index, memory_bytes
from aecli.data.labels import class_mask, encode_labels
from aecli.data.scaling import Scaling
from aecli.data.source_kind import SourceRequest
from aecli.data.vocabulary import Vocabulary
from aecli.errors import DataError, clip, shorten

TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
MAX_LINE_BYTES = 16 * 2**20  # a "line" beyond this is not text (a binary file without newlines)
IDENTITY = Scaling("none", np.zeros((), np.float32), np.ones((), np.float32))


@dataclass(frozen=True)
class TextRows:
    """The texts of a source in reading order, with their labels and ids as written."""

    texts: np.ndarray  # object array of str
    labels: list[str] | None
    ids: np.ndarray | None
    lines: np.ndarray  # the line each text starts on

    def labelled(self) -> tuple[np.ndarray | None, list[str] | None]:
        return encode_labels(self.labels) if self.labels is not None else (None, None)


@dataclass(frozen=True)
class TextColumns:
    text: str | int | list[str | int] | None
    label: str | int | None = None
    id: str | int | None = None


def read_texts(source: str, columns: TextColumns, limit: int | None = None, what: str = "data.source") -> TextRows:
    """Every text of `source` (at most `limit`), checked."""
    texts: list[str] = []
    labels: list[str] = []
    ids: list[str] = []
    lines: list[int] = []
    for text, label, identity, line in text_records(source, columns, what):
        texts.append(text)
        lines.append(line)
        labels.append(label or "")
        ids.append(identity or "")
        if limit is not None and len(texts) >= limit:
            break
    return TextRows(
        np.array(texts, dtype=object),
        labels if columns.label is not None else None,
        np.array(ids, dtype=object) if columns.id is not None else None,
        np.array(lines, np.int64),
    )


Record = tuple[str, str | None, str | None, int]  # text, label, id, line


def text_records(source: str, columns: TextColumns, what: str = "data.source") -> Iterator[Record]:
    """The texts of `source` one at a time (a file larger than memory streams), checked."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{what}: no such file: {path}")
    if not path.is_file():
        raise DataError(f"{what}: {path} is not a regular file")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{what}: {path.name} is not a text source; expected {', '.join(TEXT_SUFFIXES)}")
    if suffix == ".txt":
        for key in ("text", "label", "id"):
            if getattr(columns, key) is not None:
                raise DataError(f"data.{key}_column: a .txt source holds one text per line, without columns")
        rows = ((number, [line.rstrip("\r\n")]) for number, line in _lines(path))
        records = _records(rows, path, [0], None, None)
    elif suffix == ".jsonl":
        records = _read_jsonl(path, columns)
    else:
        records = _read_table(path, columns, "\t" if suffix == ".tsv" else ",")
    empty = True
    for record in records:
        empty = False
        yield record
    if empty:
        raise DataError(f"{what}: {path} holds no texts")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Decoded lines with their numbers: a NUL byte (binary), invalid UTF-8 or a line too long
    for text is refused with the line's number."""
    with path.open("rb") as handle:
        number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}: line {number} is longer than {MAX_LINE_BYTES // 2**20} MiB: not text")
            if b"\0" in raw:
                if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise DataError(f"{path}: UTF-16 text; convert it to UTF-8, e.g. iconv -f utf-16 -t utf-8")
                raise DataError(f"{path}: line {number} holds a NUL byte: a binary file, not UTF-8 text")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: line {number} is not UTF-8 text (byte {exc.start + 1}); convert the file, e.g. "
                    "iconv -f latin1 -t utf-8"
                ) from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _read_table(path: Path, columns: TextColumns, delimiter: str) -> Iterator[Record]:
    if columns.text is None:
        raise DataError(f"data.text_column: {path.name} is a table: name the column that holds the texts")
    lines = _lines(path)
    numbered: list[int] = []

    def texts() -> Iterator[str]:
        for number, line in lines:
            numbered.append(number)
            yield line

    # .tsv files (STS Benchmark among them) quote nothing: a quote character is part of the text.
    csv.field_size_limit(MAX_LINE_BYTES)
    if delimiter == "\t":
        reader = csv.reader(texts(), delimiter=delimiter, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(texts(), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"data.source: {path} is empty")
        width = len(header)
        text_columns = columns.text if isinstance(columns.text, list) else [columns.text]
        at = [column_index(path, header, width, column, "text_column") or 0 for column in text_columns]
        label = column_index(path, header, width, columns.label, "label_column")
        ids = column_index(path, header, width, columns.id, "id_column")
        rows = ((numbered[-1], row) for row in reader if row)
        yield from _records(rows, path, at, label, ids, width)
    except csv.Error as exc:
        raise DataError(f"{path}: line {numbered[-1] if numbered else 1}: {clip(str(exc))}") from None


def _read_jsonl(path: Path, columns: TextColumns) -> Iterator[Record]:
    keys = columns.text if isinstance(columns.text, list) else [columns.text]
    if any(not isinstance(key, str) for key in keys):
        raise DataError(f"data.text_column: {path.name} holds JSON records: name the key that holds the texts")

    def records() -> Iterator[tuple[int, list[Any]]]:
        for number, line in _lines(path):
            if not line.strip():
                raise DataError(f"{path}: line {number} is empty; every line is one JSON record")
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise DataError(f"{path}: line {number} is not a JSON record") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {number} is not a JSON object")
            wanted = [*keys, columns.label, columns.id]
            for key in wanted:
                if key is not None and key not in record:
                    raise DataError(f"{path}: line {number} has no key {shorten(key)}")
            yield number, [record.get(key) if key is not None else None for key in wanted]

    count = len(keys)
    label = count if columns.label is not None else None
    ids = count + 1 if columns.id is not None else None
    return _records(records(), path, list(range(count)), label, ids)


def _records(
    rows: Any,
    path: Path,
    text_at: list[int],
    label_at: int | None,
    id_at: int | None,
    width: int | None = None,
) -> Iterator[Record]:
    for number, cells in rows:
        if width is not None and len(cells) != width:
            raise DataError(f"{path}: line {number} has {len(cells)} columns, the header {width}")
        for at in text_at:
            text = cells[at]
            if not isinstance(text, str):
                raise DataError(f"{path}: line {number}: the text is {shorten(text)}, not a string")
            if not text.strip():
                raise DataError(f"{path}: line {number}: the text is empty; remove the line or fill it in")
            try:
                label = None if label_at is None else _cell(cells[label_at])
                identity = None if id_at is None else _cell(cells[id_at])
            except DataError as exc:
                raise DataError(f"{path}: line {number}: {exc}") from None
            yield text, label, identity, number


def _cell(value: Any) -> str:
    if value is None:
        raise DataError("a label or id is null")
    return value if isinstance(value, str) else json.dumps(value)


def columns_of(cfg: DataConfig) -> TextColumns:
    return TextColumns(cfg.text_column, cfg.label_column, cfg.id_column)


@dataclass(frozen=True)
class TextSplits:
    """The texts of a source split as training splits them (seeded), not yet vectorized."""

    found: TextRows
    splits: dict[str, Rows]  # train, test, and validation when data.validation_split > 0
    label_names: list[str] | None


def split_texts(cfg: DataConfig, seed: int) -> TextSplits:
    """Read the texts, split off test and validation texts (seeded), and keep data.classes."""
    found = read_texts(cfg.source, columns_of(cfg), cfg.limit)
    y, label_names = found.labelled()
    pool = Rows.of(found.texts, y, found.ids)
    if len(pool.x) < 3:
        raise DataError(f"data.source {cfg.source}: {len(pool.x)} texts are too few to split off a test set")
    rng = np.random.default_rng(seed)
    pool, test = pool.split(cfg.test_split, rng)
    if cfg.classes is not None:
        pool = pool.where(class_mask(pool.y, cfg.classes, label_names))
    validation: Rows | None = None
    if cfg.validation_split > 0:
        if len(pool.x) < 2:
            raise DataError(f"data.validation_split: {len(pool.x)} training text(s) cannot be split further")
        pool, validation = pool.split(cfg.validation_split, rng)
    splits = {"train": pool, "test": test, **({"validation": validation} if validation is not None else {})}
    return TextSplits(found, splits, label_names)


def load_text_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Split the texts (seeded), adapt the vocabulary on the training texts (or read
    data.text.vocabulary), and vectorize every split."""
    from aecli.vectorizer import adapt_vocabulary, token_counts, vectorize

    text = _text(cfg)
    parts = split_texts(cfg, seed)
    found, splits, label_names = parts.found, parts.splits, parts.label_names
    pool, test, validation = splits["train"], splits["test"], splits.get("validation")
    check_vectors_fit(len(found.texts), text)
    vocabulary = Vocabulary.read(text.vocabulary) if text.vocabulary is not None else adapt_vocabulary(pool.x, text)
    x = {name: vectorize(rows.x, text, vocabulary) for name, rows in splits.items()}
    notes = []
    if text.output == "tokens":
        longer = int((token_counts(found.texts, text) > text.sequence_length).sum())
        if longer:
            notes.append(
                f"{longer} of {len(found.texts)} texts have more than data.text.sequence_length "
                f"({text.sequence_length}) tokens: their first {text.sequence_length} are used"
            )
    return Dataset(
        x_train=x["train"],
        y_train=pool.y,
        x_val=x.get("validation"),
        y_val=None if validation is None else validation.y,
        x_test=x["test"],
        y_test=test.y,
        sample_shape=(x["train"].shape[1],),
        is_image=False,
        scaling=IDENTITY,
        label_names=label_names,
        description={
            "source": cfg.source,
            "source_has_test_split": False,
            "texts": len(found.texts),
            "vocabulary": len(vocabulary.tokens),
            **({"notes": notes} if notes else {}),
        },
        source_rows={name: rows.positions for name, rows in splits.items()},
        ids={name: rows.ids for name, rows in splits.items() if rows.ids is not None},
        vocabulary=vocabulary,
    )


def vector_width(text: TextConfig) -> int:
    """The length of a text's vector: its token ids, or a bag over the vocabulary."""
    return text.sequence_length if text.output == "tokens" else text.max_tokens


TRAINING_FIX = "train with data.text.stream: true, or use data.text.max_tokens of at most {fits:,} (or data.limit)"


def check_vectors_fit(texts: int, text: TextConfig, what: str = "the texts", fix: str = TRAINING_FIX) -> None:
    """Vectors are held as dense rows of float32: refuse before allocating what this machine
    cannot hold (half its memory), saying what to do (`fix`, given the max_tokens that would fit)."""
    width = vector_width(text)
    needed = texts * width * 4
    if needed > memory_bytes() // 2:
        fits = max(1, memory_bytes() // 2 // (4 * texts))
        raise DataError(
            f"data.text: {what}, {texts:,} texts x {width:,} values, need {needed / 2**30:.1f} GiB as float32 "
            f"rows, more than half this machine's memory; {fix.format(fits=fits)}"
        )


def load_texts_for_model(cfg: DataConfig, sample_shape: tuple[int, ...], scaling: Scaling) -> Samples:
    """Every text of a source, vectorized with the run's vocabulary (data.text.vocabulary)."""
    from aecli.vectorizer import vectorize

    text = _text(cfg)
    if text.vocabulary is None:
        raise DataError("data.text.vocabulary: a trained run reads texts with its own vocabulary (vocabulary.tsv)")
    found = read_texts(cfg.source, columns_of(cfg), cfg.limit)
    check_vectors_fit(len(found.texts), text, fix="read the first N texts with --set data.limit=N")
    x = vectorize(found.texts, text, Vocabulary.read(text.vocabulary))
    if x.shape[1:] != sample_shape:
        raise DataError(f"data.source: texts vectorize to {x.shape[1:]}, but the model expects {sample_shape}")
    y, label_names = found.labelled()
    positions = np.arange(len(x))
    return Samples(x, y, label_names, positions, found.ids, limited=cfg.limit is not None, texts=found.texts)


def _text(cfg: DataConfig) -> TextConfig:
    assert cfg.text is not None
    return cfg.text


def text_sample_shape(request: SourceRequest) -> tuple[int, ...]:
    """The vector width, after reading the source's first text (so `aecli validate` finds a
    missing file, a binary one or a missing column without reading the rest)."""
    assert request.text is not None
    columns = TextColumns(request.text_column, request.label_column, request.id_column)
    next(text_records(request.source, columns))
    return (vector_width(request.text),)


def refuse_raw(request: SourceRequest) -> RawData:
    raise DataError(f"data.source {request.source}: texts are read by aecli train, evaluate and embed (data.text)")
