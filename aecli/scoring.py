"""Scoring new data against a trained run in bounded memory (`aecli score`).

Rows are read a chunk at a time: CSV or JSON lines from a file or stdin, `.npy` files memory-
mapped; any other source the run reads (images, IDX, `.npz`, a series) is read whole first. Each
chunk is scaled with the run's saved scaling, reconstructed, and every row's score, flag and
top contributing input elements (the largest squared residuals, named by CSV column, pixel or
time step) are produced while the next chunk waits, so memory does not grow with the input.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aecli.data.arrays import fit_to_model
from aecli.data.labels import is_number
from aecli.errors import DataError, clip, shorten
from aecli.evaluation import per_sample_errors

CHUNK_ROWS = 4096


@dataclass
class Chunk:
    """Rows as read (raw values, or with `scaled` already the model's input), and where they came from."""

    x: np.ndarray
    first: int  # position of the first row in the input (0-based, data rows only)
    ids: list[str] | None = None
    labels: list[str] | None = None
    scaled: bool = False


@dataclass(frozen=True)
class Columns:
    """Which columns of a table are the id and the label (taken out), and the features' names."""

    id_column: str | int | None = None
    label_column: str | int | None = None


def csv_chunks(
    lines: Iterable[str], name: str, columns: Columns, rows: int = CHUNK_ROWS
) -> tuple[list[str], Iterator[Chunk]]:
    """A CSV table's feature names and its rows in chunks; the first row is a header unless every
    cell of it is a number. Bad rows are one-line DataErrors naming the line."""
    reader = csv.reader(line for line in lines if line.strip())
    try:
        first = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read it as CSV ({exc})") from None
    if first is None:
        raise DataError(f"{name}: no rows to score")
    header = None if all(is_number(cell) for cell in first) else [cell.strip() for cell in first]
    width = len(first)
    id_index = _present(columns.id_column, header, width)
    label_index = _present(columns.label_column, header, width)
    kept = [i for i in range(width) if i not in (id_index, label_index)]
    names = [header[i] for i in kept] if header else [f"column {i + 1}" for i in kept]
    pending = [] if header else [first]
    line_of_first = 2 if header else 1

    def chunks() -> Iterator[Chunk]:
        nonlocal pending
        position = 0
        try:
            for row in reader:
                pending.append(row)
                if len(pending) >= rows:
                    yield _table_chunk(
                        pending, position, line_of_first + position, name, width, kept, id_index, label_index, names
                    )
                    position, pending = position + len(pending), []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{name}: cannot read it as CSV ({exc})") from None
        if pending:
            yield _table_chunk(
                pending, position, line_of_first + position, name, width, kept, id_index, label_index, names
            )

    return names, chunks()


def _present(column: str | int | None, header: list[str] | None, width: int) -> int | None:
    """The index of an id or label column, if the table has it (scoring input may lack the label)."""
    if column is None:
        return None
    if isinstance(column, int):
        return column % width if -width <= column < width else None
    return header.index(column) if header and column in header else None


def _table_chunk(
    rows: list[list[str]],
    position: int,
    first_line: int,
    name: str,
    width: int,
    kept: list[int],
    id_index: int | None,
    label_index: int | None,
    names: list[str],
) -> Chunk:
    for offset, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{name}: line {first_line + offset} has {len(row)} columns, expected {width}")
    try:  # (no copy of the rows when every column is a feature)
        x = np.array(rows if len(kept) == width else [[row[i] for i in kept] for row in rows], dtype=np.float64)
    except ValueError:
        for offset, row in enumerate(rows):
            for i in kept:
                if not is_number(row[i]):
                    raise DataError(
                        f"{name}: line {first_line + offset}, column {i + 1} ({names[kept.index(i)]}) is not a "
                        f"number: {shorten(row[i])}"
                    ) from None
        raise
    ids = None if id_index is None else [row[id_index].strip() for row in rows]
    labels = None if label_index is None else [row[label_index].strip() for row in rows]
    return Chunk(x, position, ids, labels)


def jsonl_chunks(
    lines: Iterable[str], name: str, columns: Columns, rows: int = CHUNK_ROWS
) -> tuple[list[str], Iterator[Chunk]]:
    """JSON lines: each a list of numbers, or an object whose keys are the features (and the id or
    label column, taken out); every object has the first one's keys."""
    stream = (line for line in lines if line.strip())
    first_line = next(stream, None)
    if first_line is None:
        raise DataError(f"{name}: no rows to score")
    first = _json_row(first_line, name, 1)
    keys = list(first) if isinstance(first, dict) else None
    taken = {column for column in (columns.id_column, columns.label_column) if isinstance(column, str)}
    names = [key for key in keys if key not in taken] if keys else [f"value {i + 1}" for i in range(len(first))]

    def values(record: Any, line: int) -> tuple[list[Any], str | None, str | None]:
        if keys is None:
            if not isinstance(record, list):
                raise DataError(f"{name}: line {line} is not a JSON list like line 1")
            return record, None, None
        if not isinstance(record, dict) or set(record) != set(keys):
            raise DataError(f"{name}: line {line} does not have line 1's keys ({clip(', '.join(keys), 100)})")
        ident = None if columns.id_column not in record else str(record[columns.id_column])
        label = None if columns.label_column not in record else str(record[columns.label_column])
        return [record[key] for key in names], ident, label

    def chunks() -> Iterator[Chunk]:
        batch: list[tuple[list[Any], str | None, str | None]] = [values(first, 1)]
        position = 0
        for line, text in enumerate(stream, start=2):
            batch.append(values(_json_row(text, name, line), line))
            if len(batch) >= rows:
                yield _json_chunk(batch, position, name, len(names))
                position, batch = position + len(batch), []
        if batch:
            yield _json_chunk(batch, position, name, len(names))

    return names, chunks()


def _json_row(text: str, name: str, line: int) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"{name}: line {line} is not JSON ({exc.args[0] if exc.args else exc})") from None


def _json_chunk(batch: list[tuple[list[Any], str | None, str | None]], position: int, name: str, width: int) -> Chunk:
    for offset, (row, _, _) in enumerate(batch):
        if len(row) != width or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise DataError(f"{name}: line {position + offset + 1} needs {width} numbers, got {shorten(row)}")
    x = np.array([row for row, _, _ in batch], dtype=np.float64)
    ids = [i or "" for _, i, _ in batch] if any(i is not None for _, i, _ in batch) else None
    labels = [lab or "" for _, _, lab in batch] if any(lab is not None for _, _, lab in batch) else None
    return Chunk(x, position, ids, labels)


def array_chunks(x: np.ndarray, rows: int = CHUNK_ROWS, scaled: bool = False) -> Iterator[Chunk]:
    """An array (memory-mapped, or already read) in chunks."""
    for start in range(0, len(x), rows):
        yield Chunk(np.asarray(x[start : start + rows]), start, scaled=scaled)


def looks_like_json_lines(head: str) -> bool:
    return head.lstrip()[:1] in ("{", "[")


def element_names(sample_shape: tuple[int, ...], features: list[str] | None) -> list[str]:
    """A name for every input element: the CSV column, the pixel, or the time step (and channel)."""
    if len(sample_shape) == 1:
        return (
            features
            if features and len(features) == sample_shape[0]
            else [f"feature {i}" for i in range(sample_shape[0])]
        )
    if len(sample_shape) == 2:  # (steps, channels)
        steps, channels = sample_shape
        return [
            f"step {t}" if channels == 1 else f"step {t} channel {c}" for t in range(steps) for c in range(channels)
        ]
    height, width, channels = sample_shape
    return [
        f"pixel {r},{c}" if channels == 1 else f"pixel {r},{c} channel {k}"
        for r in range(height)
        for c in range(width)
        for k in range(channels)
    ]


@dataclass
class Scored:
    """One chunk's results: the score per row, the flags, and the top contributing elements."""

    chunk: Chunk
    scores: np.ndarray
    flagged: np.ndarray
    top: list[list[tuple[str, float]]]


def score_chunks(
    chunks: Iterable[Chunk],
    reconstruct: Callable[[np.ndarray], np.ndarray],
    sample_shape: tuple[int, ...],
    scaling: Any,
    score: str,
    threshold: float,
    names: list[str],
    top_k: int,
    what: str,
) -> Iterator[Scored]:
    """Each chunk scaled (unless it is already), reconstructed, and scored; `names` name the
    flattened input elements for the top-k contributions (squared residuals)."""
    for chunk in chunks:
        x = chunk.x if chunk.scaled else fit_to_model(chunk.x, sample_shape, scaling, what)
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
            raise DataError(f"{what}: row {chunk.first + bad + 1} holds NaN or inf")
        x_hat = reconstruct(x)
        residual = np.square(x_hat.reshape(len(x), -1).astype(np.float64) - x.reshape(len(x), -1))
        scores = _score(x, x_hat, residual, score, chunk, what)
        yield Scored(chunk, scores, scores > threshold, _top(residual, names, top_k))


def _score(x: np.ndarray, x_hat: np.ndarray, residual: np.ndarray, score: str, chunk: Chunk, what: str) -> np.ndarray:
    """The run's error measure per row, as evaluate computes it."""
    errors = per_sample_errors(x, x_hat)
    if score not in errors:
        raise DataError(
            f"{what}: the score {score} needs inputs in [0, 1] after scaling; rows {chunk.first + 1}-"
            f"{chunk.first + len(x)} leave it (use --score mse)"
        )
    return errors[score]


def _top(residual: np.ndarray, names: list[str], k: int) -> list[list[tuple[str, float]]]:
    if k <= 0:
        return [[] for _ in range(len(residual))]
    k = min(k, residual.shape[1])
    best = np.argpartition(-residual, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(residual, best, axis=1).argsort(axis=1)[:, ::-1]
    ranked = np.take_along_axis(best, order, axis=1)
    return [[(names[i], float(row[i])) for i in indices] for row, indices in zip(residual, ranked, strict=True)]


def format_top(top: list[tuple[str, float]]) -> str:
    return ";".join(f"{name}={value:.4g}" for name, value in top)
