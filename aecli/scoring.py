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

from aecli.code_scores import CodeSpace
from aecli.data.arrays import fit_to_model
from aecli.data.features import feature_positions
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
    """Columns that are not features: the id column, the label column, and others to drop (the
    run's own id column when --id-column names another). A column the input lacks is fine, unless
    `required` names it (an id column the user asked for)."""

    id_column: str | int | None = None
    label_column: str | int | None = None
    dropped: tuple[str | int, ...] = ()
    required: tuple[str | int, ...] = ()
    features: list[str] | None = None  # the run's feature names: named columns are taken by them, in this order


@dataclass(frozen=True)
class _Layout:
    """A table's columns: which are features (and their names), the id and the label."""

    name: str
    width: int
    kept: list[int]
    names: list[str]
    id_index: int | None
    label_index: int | None


def csv_chunks(
    lines: Iterable[str], name: str, columns: Columns, rows: int = CHUNK_ROWS
) -> tuple[list[str], Iterator[Chunk]]:
    """A CSV table's feature names and its rows in chunks; the first row is a header unless every
    cell of it is a number (as training reads a CSV); empty rows are skipped. Bad rows are
    one-line DataErrors naming their line in the file."""
    reader = csv.reader(lines)

    def next_row() -> tuple[list[str], int] | None:
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    return row, reader.line_num
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{name}: cannot read it as CSV ({exc})") from None
        return None

    first = next_row()
    if first is None:
        raise DataError(f"{name}: no rows to score")
    header = None if all(is_number(cell) for cell in first[0]) else [cell.strip() for cell in first[0]]
    layout = _layout(name, header, len(first[0]), columns)
    pending: list[tuple[list[str], int]] = [] if header else [first]

    def chunks() -> Iterator[Chunk]:
        nonlocal pending
        position = 0
        while (row := next_row()) is not None:
            pending.append(row)
            if len(pending) >= rows:
                yield _table_chunk(pending, position, layout)
                position, pending = position + len(pending), []
        if pending:
            yield _table_chunk(pending, position, layout)
        elif not position:
            raise DataError(f"{name}: the header has no data rows under it")

    return layout.names, chunks()


def _layout(name: str, header: list[str] | None, width: int, columns: Columns) -> _Layout:
    def index(column: str | int | None) -> int | None:
        """The column's position, if the table has it (scoring input may lack the label)."""
        if column is None:
            return None
        if isinstance(column, int):
            return column % width if -width <= column < width else None
        return header.index(column) if header and column in header else None

    for column in columns.required:
        if index(column) is None:
            raise DataError(f"{name}: no column {shorten(column)} (--id-column)")
    id_index, label_index = index(columns.id_column), index(columns.label_column)
    dropped = {i for i in (id_index, label_index, *map(index, columns.dropped)) if i is not None}
    kept = [i for i in range(width) if i not in dropped]
    if not kept:
        raise DataError(f"{name}: no feature columns left besides the id and label columns")
    if header:
        order = feature_positions([header[i] for i in kept], columns.features, name)
        kept = kept if order is None else [kept[i] for i in order]
    names = [header[i] for i in kept] if header else [f"column {i + 1}" for i in kept]
    return _Layout(name, width, kept, names, id_index, label_index)


def _table_chunk(rows: list[tuple[list[str], int]], position: int, layout: _Layout) -> Chunk:
    width, kept = layout.width, layout.kept
    for row, line in rows:
        if len(row) != width:
            raise DataError(f"{layout.name}: line {line} has {len(row)} columns, expected {width}")
    in_place = kept == list(range(width))  # every column a feature, in order
    cells = [row for row, _ in rows] if in_place else [[row[i] for i in kept] for row, _ in rows]
    try:  # (no copy of the rows when every column is a feature)
        x = np.array(cells, dtype=np.float64)
    except ValueError:
        for (_row, line), values in zip(rows, cells, strict=True):
            for position_in_row, cell in enumerate(values):
                if not is_number(cell):
                    column = kept[position_in_row]
                    raise DataError(
                        f"{layout.name}: line {line}, column {column + 1} ({layout.names[position_in_row]}) is not "
                        f"a number: {shorten(cell)}"
                    ) from None
        raise DataError(f"{layout.name}: rows from line {rows[0][1]} are not numbers") from None
    ids = None if layout.id_index is None else [row[layout.id_index].strip() for row, _ in rows]
    labels = None if layout.label_index is None else [row[layout.label_index].strip() for row, _ in rows]
    return Chunk(x, position, ids, labels)


def jsonl_chunks(
    lines: Iterable[str], name: str, columns: Columns, rows: int = CHUNK_ROWS
) -> tuple[list[str], Iterator[Chunk]]:
    """JSON lines: each a list of numbers, or an object whose keys are the features (and the id or
    label column, taken out); every object has the first one's keys. Blank lines are skipped;
    messages name lines as the file numbers them."""
    numbered = _numbered(lines, name)
    head = next(numbered, None)
    if head is None:
        raise DataError(f"{name}: no rows to score")
    first = _json_row(head[0], name, head[1])
    if not isinstance(first, (list, dict)) or not first:
        raise DataError(f"{name}: line {head[1]} is not a JSON list of numbers or an object of them")
    keys = list(first) if isinstance(first, dict) else None
    if keys is not None:
        for column in columns.required:
            if column not in keys:
                raise DataError(f"{name}: no key {shorten(column)} (--id-column)")
    taken = {c for c in (columns.id_column, columns.label_column, *columns.dropped) if isinstance(c, str)}
    names = [key for key in keys if key not in taken] if keys else [f"value {i + 1}" for i in range(len(first))]
    if keys:
        order = feature_positions(names, columns.features, name)
        names = names if order is None else [names[i] for i in order]

    def values(record: Any, line: int) -> tuple[list[Any], str | None, str | None]:
        if keys is None:
            if not isinstance(record, list):
                raise DataError(f"{name}: line {line} is not a JSON list like the first line")
            return record, None, None
        if not isinstance(record, dict) or set(record) != set(keys):
            raise DataError(f"{name}: line {line} does not have the first line's keys ({clip(', '.join(keys), 100)})")
        ident = None if columns.id_column not in record else str(record[columns.id_column])
        label = None if columns.label_column not in record else str(record[columns.label_column])
        return [record[key] for key in names], ident, label

    def chunks() -> Iterator[Chunk]:
        batch = [(*values(first, head[1]), head[1])]
        position = 0
        for text, line in numbered:
            batch.append((*values(_json_row(text, name, line), line), line))
            if len(batch) >= rows:
                yield _json_chunk(batch, position, name, len(names))
                position, batch = position + len(batch), []
        if batch:
            yield _json_chunk(batch, position, name, len(names))

    return names, chunks()


def _numbered(lines: Iterable[str], name: str) -> Iterator[tuple[str, int]]:
    """Non-blank lines with their line numbers; undecodable bytes are a one-line DataError."""
    try:
        for number, text in enumerate(lines, start=1):
            if text.strip():
                yield text, number
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json_row(text: str, name: str, line: int) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"{name}: line {line} is not JSON ({exc.args[0] if exc.args else exc})") from None


def _json_chunk(
    batch: list[tuple[list[Any], str | None, str | None, int]], position: int, name: str, width: int
) -> Chunk:
    for row, _, _, line in batch:
        if len(row) != width or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise DataError(f"{name}: line {line} needs {width} numbers, got {shorten(row)}")
    x = np.array([row for row, _, _, _ in batch], dtype=np.float64)
    ids = [i or "" for _, i, _, _ in batch] if any(i is not None for _, i, _, _ in batch) else None
    labels = [lab or "" for _, _, lab, _ in batch] if any(lab is not None for _, _, lab, _ in batch) else None
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
    code_scorer: CodeScorer | None = None,
) -> Iterator[Scored]:
    """Each chunk scaled (unless it is already), reconstructed, and scored; `names` name the
    flattened input elements for the top-k contributions (squared residuals)."""
    for chunk in chunks:
        x = checked_rows(chunk.x, what, chunk.first)  # (raw: NaN named as such, before scaling)
        x = x if chunk.scaled else fit_to_model(x, sample_shape, scaling, what, chunk.first)
        x_hat = reconstruct(x)
        scores, flagged, residual = score_rows(x, x_hat, score, threshold, code_scorer)
        yield Scored(chunk, scores, flagged, top_contributions(residual, names, top_k))


def checked_rows(x: np.ndarray, what: str, first: int = 0) -> np.ndarray:
    """Scaled rows, refused (naming the row, counted from 1 after `first`) when any holds NaN or inf."""
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise DataError(f"{what}: row {first + bad + 1} holds NaN or inf")
    return x


@dataclass(frozen=True)
class CodeScorer:
    """What a code-space score (knn, combined) needs besides the reconstruction: the run's
    encoder (as a function of scaled rows) and its training codes."""

    encode: Callable[[np.ndarray], np.ndarray]
    space: CodeSpace

    def scores(self, x: np.ndarray, mse: np.ndarray) -> dict[str, np.ndarray]:
        return self.space.scores(self.encode(x), mse)


def score_rows(
    x: np.ndarray, x_hat: np.ndarray, score: str, threshold: float, code_scorer: CodeScorer | None = None
) -> tuple[np.ndarray, ...]:
    """Scaled rows and their reconstructions -> per-row scores, flags, and squared residuals per
    input element (flattened): what score and serve report."""
    # The run's measure as evaluate computes it (bce by its formula even for a row outside [0, 1]).
    errors = per_sample_errors(x, x_hat, bce=score == "bce", dssim=score == "dssim")
    if code_scorer is not None:
        errors.update(code_scorer.scores(x, errors["mse"]))
    scores = errors[score]
    residual = np.square(x_hat.reshape(len(x), -1).astype(np.float64) - x.reshape(len(x), -1))
    flagged = ~(scores <= threshold)  # a NaN score (a model that produced NaN) is flagged, not hidden
    return scores, flagged, residual


def top_contributions(residual: np.ndarray, names: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the k input elements with the largest squared residuals, largest first."""
    if k <= 0:
        return [[] for _ in range(len(residual))]
    k = min(k, residual.shape[1])
    best = np.argpartition(-residual, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(residual, best, axis=1).argsort(axis=1)[:, ::-1]
    ranked = np.take_along_axis(best, order, axis=1)
    return [[(names[i], float(row[i])) for i in indices] for row, indices in zip(residual, ranked, strict=True)]


def format_top(top: list[tuple[str, float]]) -> str:
    return ";".join(f"{name}={value:.4g}" for name, value in top)
