"""Equal-length sequences, one per row, with a label: the UCR/UEA archive's layout (label first,
values whitespace- or comma-separated), or the label last (the TensorFlow tutorial's ecg.csv).

Each row is one sample of shape (steps, 1); the series kind (series.py) is for one long
series cut into windows instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from aecli.data.arrays import RawData
from aecli.data.labels import encode_labels, is_number
from aecli.data.source_kind import SourceKind, SourceRequest
from aecli.errors import DataError, clip, shorten

_SEPARATOR = re.compile(r"[,\s]+")


def read_sequences(request: SourceRequest) -> RawData:
    assert request.sequences is not None
    path = Path(request.source)
    if not path.is_file():
        raise DataError(f"data.source: {'no such file' if not path.exists() else 'not a regular file'}: {path}")
    where = request.sequences.label
    rows: list[list[str]] = []
    lines: list[int] = []
    header_checked = False
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                cells = [cell for cell in _SEPARATOR.split(line.strip()) if cell]
                if not cells:
                    continue
                if not header_checked:
                    header_checked = True
                    if not any(is_number(cell) for cell in _values_of(cells, where)):
                        continue  # a header row: no value of it is a number
                rows.append(cells)
                lines.append(number)
                if request.limit is not None and len(rows) >= request.limit:
                    break
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as text ({clip(str(exc))})") from None
    if not rows:
        raise DataError(f"{path}: holds no sequences")
    width = len(rows[0])
    if width < 2 + (where != "none"):
        raise DataError(f"{path}: line {lines[0]} has {width} value(s); a sequence needs at least 2 besides its label")
    for cells, number in zip(rows, lines, strict=True):
        if len(cells) != width:
            raise DataError(
                f"{path}: line {number} has {len(cells)} values, line {lines[0]} has {width}; sequences must all "
                "have the same length"
            )
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    if where != "none":
        column = 0 if where == "first" else -1
        labels, label_names = encode_labels([cells[column] for cells in rows])
        rows = [_values_of(cells, where) for cells in rows]
    try:
        x = np.array(rows, dtype=np.float64)
    except ValueError:
        row, cell = next((r, c) for r, cells in enumerate(rows) for c, v in enumerate(cells) if not is_number(v))
        raise DataError(
            f"{path}: line {lines[row]}, value {cell + 1} is not a number: {shorten(rows[row][cell])}"
        ) from None
    return RawData(x[:, :, None], labels, None, None, label_names, sequences=True)


def _values_of(cells: list[str], where: str) -> list[str]:
    return cells[1:] if where == "first" else cells[:-1] if where == "last" else cells


SOURCE_KIND = SourceKind("sequences", claims=lambda request: request.sequences is not None, read=read_sequences)
