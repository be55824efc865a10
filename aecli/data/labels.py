"""Labels as written in the data: integers stay numbers, anything else is kept as names
(stored as codes, positions in `label_names`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from aecli.errors import DataError


def encode_labels(cells: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels stay numbers; anything else (names, or integers beyond int64 such as 1e20)
    is kept as written, as names."""
    if all(is_integer(cell) for cell in cells):
        values = [int(float(cell)) for cell in cells]
        if all(-(2**62) < value < 2**62 for value in values):
            return np.array(values, dtype=np.int64), None
    names, codes = np.unique(np.array(cells), return_inverse=True)
    return codes.astype(np.int64), [str(name) for name in names]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_integer(text: str) -> bool:
    return is_number(text) and float(text).is_integer()


def class_mask(y: np.ndarray | None, classes: list[int | str], label_names: list[str] | None) -> np.ndarray:
    if y is None:
        raise DataError("data.classes: the source has no labels to filter on")
    keep = np.isin(y, label_codes(classes, label_names, "data.classes"))
    if not keep.any():
        raise DataError(
            f"data.classes: none of {classes} occur in the training labels (present: {present_labels(y, label_names)})"
        )
    return keep


def label_codes(values: list[int | str], label_names: list[str] | None, what: str) -> list[int]:
    """The codes of labels given by value, as written in the data: numbers, or names for
    string labels (stored as positions in `label_names`). Names absent from the data match nothing."""
    if label_names is not None:
        index = {name: code for code, name in enumerate(label_names)}
        return [index[str(value)] for value in values if str(value) in index]
    codes = []
    for value in values:
        text = str(value).strip()
        if not is_integer(text):
            raise DataError(f"{what}: {value!r} is not a label of this data, whose labels are integers")
        codes.append(int(float(text)))
    return codes


def label_name(label: Any, label_names: list[str] | None) -> str:
    """A label as written in the data: its name for string labels, else the number."""
    return label_names[int(label)] if label_names else str(int(label))


def present_labels(y: np.ndarray, label_names: list[str] | None, most: int = 20) -> str:
    """The labels in `y`, as written in the data, for messages."""
    values = np.unique(y)
    shown = ", ".join(repr(label_name(v, label_names)) if label_names else str(v) for v in values[:most])
    return shown + (f", ... ({len(values)} in all)" if len(values) > most else "")
