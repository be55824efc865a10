"""`aecli embed` for a text run: texts read a chunk at a time (a file larger than memory
streams), vectorized with the run's vocabulary and encoded; codes go to a temporary file that
becomes `--out` only when every text is encoded. Memory stays bounded by the chunk size."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from aecli.atomic import atomic_path
from aecli.config import DataConfig, TextConfig
from aecli.data.text import Record, columns_of, text_records
from aecli.data.vocabulary import Vocabulary
from aecli.errors import DataError
from aecli.interrupts import pending_interrupt


def embed_texts(
    cfg: DataConfig, encoder: Any, out: Path, batch_size: int, progress: Callable[[int], None] | None
) -> tuple[int, int]:
    """Write the codes of every text of `cfg.source` to `out` (.npy, or .csv with line, id,
    label and codes); returns (texts, dimensions)."""
    assert cfg.text is not None and cfg.text.vocabulary is not None
    encode = text_encoder(encoder, cfg.text, Vocabulary.read(cfg.text.vocabulary))
    try:
        chunks = _chunks(islice(text_records(cfg.source, columns_of(cfg), "input"), cfg.limit), batch_size)
        with atomic_path(out) as temp:
            writer = _NpyWriter(temp) if out.suffix.lower() == ".npy" else _CsvWriter(temp, cfg)
            with writer:
                for records in chunks:
                    writer.add(records, encode([record[0] for record in records]))
                    _raise_pending_interrupt()
                    if progress is not None:
                        progress(writer.rows)
        _raise_pending_interrupt()
    except DataError as exc:
        message = str(exc).replace("data.source", "input", 1)
        if message.startswith(("data.label_column", "data.id_column")):
            message += " (the run's; --set data.label_column=null or data.id_column=null reads INPUT without it)"
        raise DataError(message) from None
    return writer.rows, writer.dimensions


def _raise_pending_interrupt() -> None:
    """A Ctrl-C that arrived while TensorFlow was in native code can be swallowed there: the flag
    the handler left is checked after every chunk, so no file is written after one."""
    interrupt = pending_interrupt()
    if interrupt is not None:
        raise interrupt


def text_encoder(encoder: Any, text: TextConfig, vocabulary: Vocabulary) -> Callable[[list[str]], np.ndarray]:
    """Texts -> codes. A bow encoder (a chain the plan builds: unit-length normalization, Dense
    layers) runs its first two layers on the sparse bags (scipy), and the rest as they are: the
    same codes, without a dense vocabulary-wide row per text."""
    from aecli.vectorizer import sparse_bags, string_tensor, text_vectorization

    bags = sparse_bags(text, vocabulary)
    layers = [layer for layer in encoder.layers if type(layer).__name__ != "InputLayer"]
    if bags is None or [type(layer).__name__ for layer in layers[:2]] != ["UnitNormalization", "Dense"]:
        layer = text_vectorization(text, vocabulary)
        return lambda texts: np.asarray(
            encoder.predict_on_batch(np.asarray(layer(string_tensor(texts)), np.float32)), np.float32
        )
    from keras import ops
    from sklearn.preprocessing import normalize

    first, rest = layers[1], layers[2:]
    kernel, bias = ops.convert_to_numpy(first.kernel), ops.convert_to_numpy(first.bias)

    def encode(texts: list[str]) -> np.ndarray:
        hidden = first.activation(np.asarray(normalize(bags(texts)) @ kernel + bias, np.float32))
        for layer in rest:
            hidden = layer(hidden)
        return np.asarray(ops.convert_to_numpy(hidden), np.float32)

    return encode


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(islice(records, size)):
        yield chunk


class _NpyWriter:
    """Codes appended to a raw float32 file; the .npy header (whose shape needs the final row
    count) is written in front at the end, the codes copied behind it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path.with_name(path.name + ".codes")
        self.rows = self.dimensions = 0

    def __enter__(self) -> _NpyWriter:
        self.handle = self.raw.open("wb")
        return self

    def add(self, records: list[Record], codes: np.ndarray) -> None:
        self.dimensions = codes.shape[1]
        self.handle.write(np.ascontiguousarray(codes, "<f4").tobytes())
        self.rows += len(codes)

    def __exit__(self, kind: Any, *rest: Any) -> None:
        self.handle.close()
        try:
            if kind is None:
                header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dimensions)}
                with self.path.open("wb") as target, self.raw.open("rb") as source:
                    npy_format.write_array_header_1_0(target, header)
                    shutil.copyfileobj(source, target, 2**22)
        finally:
            self.raw.unlink(missing_ok=True)


class _CsvWriter:
    def __init__(self, path: Path, cfg: DataConfig) -> None:
        self.path, self.rows, self.dimensions = path, 0, 0
        self.ids, self.labels = cfg.id_column is not None, cfg.label_column is not None

    def __enter__(self) -> _CsvWriter:
        self.handle = self.path.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, lineterminator="\n")
        return self

    def add(self, records: list[Record], codes: np.ndarray) -> None:
        if not self.rows:
            self.dimensions = codes.shape[1]
            header = ["line", *(["id"] if self.ids else []), *(["label"] if self.labels else [])]
            self.writer.writerow([*header, *(f"z{i}" for i in range(self.dimensions))])
        for (_, label, identity, line), code in zip(records, codes, strict=True):
            origin = [line, *([identity] if self.ids else []), *([label] if self.labels else [])]
            self.writer.writerow([*origin, *(f"{value:.8g}" for value in code)])
        self.rows += len(codes)

    def __exit__(self, *rest: Any) -> None:
        self.handle.close()
