"""What every data source becomes: raw arrays as read (`RawData`), then scaled float32 splits
(`Dataset`) for training, or scaled rows for a trained model (`Samples`), each row keeping
where it came from. numpy only: `aecli validate` reads shapes through here without TensorFlow."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aecli.data.scaling import Scaling
from aecli.data.vocabulary import Vocabulary
from aecli.errors import DataError


@dataclass(frozen=True)
class RawData:
    """What a source holds, before splitting and scaling."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    label_names: list[str] | None = None
    ids_train: np.ndarray | None = None  # data.id_column's values, as written (strings)
    ids_test: np.ndarray | None = None
    sequences: bool = False  # samples are (steps, channels) sequences, not table rows or images
    feature_names: list[str] | None = None  # a CSV table's feature columns, by its header


@dataclass(frozen=True)
class Timeline:
    """Where the windows of one stretch of a series lie in time."""

    times: np.ndarray  # (steps,) datetime64, or numbers (a numeric clock, or step positions when untimed)
    values: np.ndarray  # (steps, channels) as read, unscaled
    starts: np.ndarray  # (windows,) each window's first step, counted from the stretch's start
    size: int  # steps per window
    columns: list[str]
    timed: bool
    labels: np.ndarray | None = None  # (steps,) bool: labelled anomalous
    offset: int = 0  # the stretch's first step in the series
    zone: str = ""  # the UTC offset the file's times were written with ("+02:00"), in which `times` are kept

    def cut(self, chosen: np.ndarray) -> Timeline:
        """The stretch the windows `chosen` cover, with only those windows."""
        starts = self.starts[chosen]
        first, last = int(starts.min()), int(starts.max()) + self.size
        return Timeline(
            self.times[first:last],
            self.values[first:last],
            starts - first,
            self.size,
            self.columns,
            self.timed,
            None if self.labels is None else self.labels[first:last],
            self.offset + first,
            self.zone,
        )

    def steps(self, part: slice) -> Timeline:
        """Some of the stretch's steps, for showing them (the windows are kept as they were)."""
        first = part.indices(len(self.times))[0]
        labels = None if self.labels is None else self.labels[part]
        return Timeline(
            self.times[part],
            self.values[part],
            self.starts,
            self.size,
            self.columns,
            self.timed,
            labels,
            self.offset + first,
            self.zone,
        )

    def start_times(self) -> np.ndarray:
        """Each window's start as written in outputs (its id)."""
        return time_text(self.times[self.starts], self.timed, self.zone)


def show_time(moment: np.generic, zone: str = "") -> str:
    """A time as written in outputs: ISO text (with the file's UTC offset, when it wrote one), or
    a numeric clock's value exactly (epoch seconds keep every digit)."""
    if isinstance(moment, np.datetime64):
        return str(moment).replace("T", " ") + zone
    value = float(moment)
    return str(int(value)) if value.is_integer() else repr(value)


def time_text(times: np.ndarray, timed: bool, zone: str = "") -> np.ndarray:
    """Times as written in outputs: ISO text, or the number (step position when untimed)."""
    return np.array([show_time(moment, zone) if timed else str(int(moment)) for moment in times], object)


@dataclass
class Dataset:
    """Scaled float32 splits, each of shape (n, *sample_shape); labels are int arrays or None."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    sample_shape: tuple[int, ...]
    is_image: bool
    scaling: Scaling
    label_names: list[str] | None = None
    description: dict[str, Any] = field(default_factory=dict)
    # Per split ("train", "validation", "test"): each row's position in the source it came from
    # (the file, or the source's own test set), and its data.id_column value when there is one.
    source_rows: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, np.ndarray] = field(default_factory=dict)
    timelines: dict[str, Timeline] = field(default_factory=dict)  # per split, for windows of a series
    vocabulary: Vocabulary | None = None  # text sources: what vectorized them, saved with the run

    def split(self, part: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The rows and labels of "train", "validation" or "test" (validation may be empty)."""
        if part == "validation":
            x_val = self.x_val if self.x_val is not None else np.empty((0, *self.sample_shape), np.float32)
            return x_val, self.y_val
        return (self.x_train, self.y_train) if part == "train" else (self.x_test, self.y_test)

    @property
    def scaled_range(self) -> tuple[float, float]:
        """The smallest and largest scaled training value (a bce loss needs [0, 1])."""
        return float(self.x_train.min()), float(self.x_train.max())

    def origin(self, split: str) -> dict[str, np.ndarray]:
        """Per-sample columns saying where each row of `split` came from: source_row, and id."""
        return origin_columns(self.source_rows.get(split), self.ids.get(split))

    def shapes(self) -> dict[str, Any]:
        return {
            "sample_shape": list(self.sample_shape),
            "train": len(self.x_train),
            "validation": 0 if self.x_val is None else len(self.x_val),
            "test": len(self.x_test),
            "labelled": self.y_train is not None,
        }


@dataclass(frozen=True)
class Rows:
    """Rows of one source split on their way to a Dataset split, with where each came from."""

    x: np.ndarray
    y: np.ndarray | None
    positions: np.ndarray  # each row's position in the source split
    ids: np.ndarray | None

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray | None, ids: np.ndarray | None) -> Rows:
        return cls(x, None if y is None else y.astype(np.int64), np.arange(len(x)), ids)

    def first(self, limit: int | None) -> Rows:
        return self if limit is None else self.where(slice(0, limit))

    def where(self, keep: Any) -> Rows:
        return Rows(
            self.x[keep],
            None if self.y is None else self.y[keep],
            self.positions[keep],
            None if self.ids is None else self.ids[keep],
        )

    def split(self, fraction: float, rng: np.random.Generator) -> tuple[Rows, Rows]:
        """Shuffle, then hold out `fraction` of the rows (at least one, never all): (kept, held)."""
        order = rng.permutation(len(self.x))
        n_held = min(max(1, round(fraction * len(self.x))), len(self.x) - 1)
        return self.where(order[n_held:]), self.where(order[:n_held])


@dataclass(frozen=True)
class Samples:
    """Rows of a source read for a trained model (evaluate, reconstruct), with where each came from."""

    x: np.ndarray
    y: np.ndarray | None
    label_names: list[str] | None
    source_rows: np.ndarray  # position in the source's train set, then in its test set
    ids: np.ndarray | None
    limited: bool  # data.limit cut at least one of the source's sets
    timeline: Timeline | None = None  # windows of a series: where they lie in time
    texts: np.ndarray | None = None  # text sources: the texts as read

    def origin(self) -> dict[str, np.ndarray]:
        """Per-sample columns saying where each row came from: source_row, and id."""
        return origin_columns(self.source_rows, self.ids)


def origin_columns(source_rows: np.ndarray | None, ids: np.ndarray | None) -> dict[str, np.ndarray]:
    columns = {} if source_rows is None else {"source_row": source_rows}
    return columns if ids is None else {**columns, "id": ids}


def fit_to_model(
    x: np.ndarray, sample_shape: tuple[int, ...], scaling: Scaling, what: str, first: int = 0
) -> np.ndarray:
    """Shape raw samples as the model's input and apply the run's saved scaling.

    The samples must have the model's shape (a missing or extra channel axis of size 1 aside),
    or be flat rows of its size (an image flattened into a CSV row); anything else with the same
    number of values (14x56 for 28x28) is a different layout, and refused.
    """
    given = tuple(x.shape[1:])
    squeezed = tuple(size for size in given if size != 1)
    fits = squeezed == tuple(size for size in sample_shape if size != 1) or (
        len(given) == 1 and given[0] == math.prod(sample_shape)
    )
    if not fits:
        raise DataError(f"{what}: samples have shape {given}, but the model expects {sample_shape}")
    return scaling.apply(x.reshape((len(x), *sample_shape)), what, first)


def sample_shape_of(x: np.ndarray, sequences: bool = False) -> tuple[int, ...]:
    """(features,) for tabular data, (height, width, channels) for images, (steps, channels) for sequences."""
    if sequences:
        return (x.shape[1], 1) if x.ndim == 2 else tuple(x.shape[1:])
    if x.ndim == 2:
        return (x.shape[1],)
    if x.ndim == 3:
        return (x.shape[1], x.shape[2], 1)
    return tuple(x.shape[1:])


def check_raw(raw: RawData, source: str) -> None:
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x is None:
            continue
        if x.dtype.kind not in "biuf":
            raise DataError(f"data.source {source}: {split} data has dtype {x.dtype}, expected numbers")
        if x.ndim < 2 or x.ndim > 4:
            raise DataError(
                f"data.source {source}: {split} data has shape {x.shape}; expected (samples, features) "
                f"or images (samples, height, width[, channels])"
            )
        if len(x) == 0 or math.prod(x.shape[1:]) == 0:
            raise DataError(f"data.source {source}: {split} data is empty (shape {x.shape})")
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                first = int(np.argmax(bad))
                raise DataError(
                    f"data.source {source}: {split} data has {int(bad.sum())} row(s) with NaN or inf "
                    f"(first: row {first + 1}, counted from 1 without a header); clean or drop them"
                )
            if x.dtype.itemsize > 4:
                huge = (np.abs(x.reshape(len(x), -1)) > np.finfo(np.float32).max).any(axis=1)
                if huge.any():
                    raise DataError(
                        f"data.source {source}: {split} data has {int(huge.sum())} row(s) with values beyond "
                        f"float32's range, about ±3.4e38 (first: row {int(np.argmax(huge)) + 1}, counted from 1 "
                        "without a header); rescale or drop them"
                    )
        if y is not None:
            if y.dtype.kind not in "biu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
                raise DataError(f"data.source {source}: {split} labels have dtype {y.dtype}, expected integers")
            if y.ndim != 1 or len(y) != len(x):
                raise DataError(
                    f"data.source {source}: {len(x)} {split} samples but labels of shape {y.shape}; "
                    f"images and labels must have the same length"
                )
    if raw.x_test is not None and raw.x_test.shape[1:] != raw.x_train.shape[1:]:
        raise DataError(
            f"data.source {source}: train samples have shape {raw.x_train.shape[1:]} "
            f"but test samples {raw.x_test.shape[1:]}"
        )
