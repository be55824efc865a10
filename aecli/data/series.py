"""Time series: a CSV of observations over time, cut into sliding windows, split by time.

A series is read whole (timestamps checked for order and duplicates, gaps reported, missing
values refused or filled as configured), cut into consecutive stretches for training,
validation and test (earlier to later, so that nothing from the future leaks into training),
scaled per channel with statistics of the training stretch, and windowed. Every split keeps a
`Timeline`: where its windows lie in time, which is what anomalies located in time need.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aecli.data.arrays import Dataset, RawData, Samples, Timeline, show_time, time_text
from aecli.data.files import column_index, memory_bytes
from aecli.data.labels import is_number
from aecli.data.scaling import Scaling, aligned_empty, fit_channel_scaling
from aecli.data.source_kind import SourceKind, SourceRequest
from aecli.errors import DataError, clip, shorten

if TYPE_CHECKING:
    from aecli.config import DataConfig, SeriesConfig

MISSING_CELLS = frozenset({"", "nan", "NaN", "NAN", "null", "NULL", "NA", "N/A"})
TRUE_LABELS = frozenset({"1", "true", "True", "TRUE", "yes", "anomaly"})
FALSE_LABELS = frozenset({"0", "false", "False", "FALSE", "no", "normal"})
GAP_FACTOR = 1.5  # a step more than this many times the usual one is a gap
PROBATION_SHARE = 0.15  # NAB's probationary period: this share of a file's rows, at most PROBATION_MAX_ROWS
PROBATION_MAX_ROWS = 750


@dataclass(frozen=True)
class SeriesTable:
    """A series as read: one row per time step."""

    times: np.ndarray  # datetime64[ms], or float64 when the time column holds numbers, or step positions
    values: np.ndarray  # (steps, channels) float64
    columns: list[str]
    value_columns: list[str | int]  # how data.series.value_columns names them: by name, or by index without a header
    labels: np.ndarray | None  # (steps,) bool: labelled anomalous
    timed: bool  # False: no time column, `times` are step positions
    notes: list[str]  # gaps found, values filled: said in the run's description
    zone: str = ""  # the UTC offset of the file's first time ("+02:00"), in which `times` are kept


def read_series_table(
    path: Path, series: SeriesConfig, label_column: str | int | None = None, limit: int | None = None
) -> SeriesTable:
    """Read, check and (as configured) fill a series CSV."""
    rows, lines, header = _csv_rows(path, series.time_format)
    width = len(rows[0])
    time_index = column_index(path, header, width, series.time_column, "series.time_column")
    label_index = column_index(path, header, width, label_column, "label_column")
    taken = {index for index in (time_index, label_index) if index is not None}
    if series.value_columns is not None:
        value_indexes = [column_index(path, header, width, c, "series.value_columns") for c in series.value_columns]
        clash = [index for index in value_indexes if index in taken]
        if clash:
            raise DataError(f"data.series.value_columns: column {clash[0] + 1} is also the time or label column")
        chosen = [index for index in value_indexes if index is not None]
    else:
        chosen = [index for index in range(width) if index not in taken]
    if not chosen:
        raise DataError(f"{path}: no value columns besides the time and label columns")
    if limit is not None:
        rows, lines = rows[:limit], lines[:limit]
    names = [header[index] if header else f"column {index + 1}" for index in chosen]
    values = _values(path, rows, lines, chosen, names)
    notes: list[str] = []
    values = _filled(path, values, lines, names, series.missing, notes)
    labels = None if label_index is None else _labels(path, rows, lines, label_index)
    zone = ""
    if time_index is None:
        times, timed = np.arange(len(rows), dtype=np.float64), False
    else:
        (times, zone), timed = _times(path, [row[time_index].strip() for row in rows], lines, series.time_format), True
        kept = _in_order(path, times, lines, series.disorder, notes, zone)
        if not kept.all():
            times, values, lines = (
                times[kept],
                values[kept],
                [line for line, keep in zip(lines, kept, strict=True) if keep],
            )
            labels = None if labels is None else labels[kept]
        notes += _gaps(times, zone)
    keys: list[str | int] = list(names) if header else list(chosen)
    return SeriesTable(times, values, names, keys, labels, timed, notes, zone)


def _csv_rows(path: Path, time_format: str | None) -> tuple[list[list[str]], list[int], list[str] | None]:
    """The data rows (blank lines skipped), each one's line number, and the header when there is one."""
    if not path.exists():
        raise DataError(f"data.source: no such file: {path}")
    if not path.is_file():
        raise DataError(f"data.source: {path} is not a regular file")
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append(row)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{path}: cannot read it as CSV ({clip(str(exc).splitlines()[0] if str(exc) else '')})"
        ) from None
    if not rows:
        raise DataError(f"{path}: the series file has no rows")
    has_header = not all(_data_cell(cell, time_format) for cell in rows[0])
    header = [cell.strip() for cell in rows[0]] if has_header else None
    rows, lines = (rows[1:], lines[1:]) if has_header else (rows, lines)
    if not rows:
        raise DataError(f"{path}: the series file has a header but no rows")
    width = len(header) if header else len(rows[0])
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} columns, expected {width}")
    return rows, lines, header


def _data_cell(cell: str, time_format: str | None) -> bool:
    """Whether a cell of the first row is data (so that the file has no header row)."""
    cell = cell.strip()
    return (
        is_number(cell)
        or cell in MISSING_CELLS
        or cell in TRUE_LABELS | FALSE_LABELS
        or _looks_like_time(cell, time_format)
    )


def _looks_like_time(cell: str, time_format: str | None = None) -> bool:
    try:
        dt.datetime.strptime(cell.strip(), time_format) if time_format else dt.datetime.fromisoformat(cell.strip())
    except ValueError:
        return False
    return True


def _values(path: Path, rows: list[list[str]], lines: list[int], chosen: list[int], names: list[str]) -> np.ndarray:
    values = np.empty((len(rows), len(chosen)), np.float64)
    for position, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for channel, index in enumerate(chosen):
            cell = row[index].strip()
            if cell in MISSING_CELLS:
                values[position, channel] = np.nan
                continue
            try:
                values[position, channel] = float(cell)
            except ValueError:
                hint = " (a time: name its column in data.series.time_column)" if _looks_like_time(cell) else ""
                raise DataError(
                    f"{path}: line {line}, column {index + 1} ({names[channel]}) is not a number: {shorten(cell)}{hint}"
                ) from None
    if not np.isfinite(values[~np.isnan(values)]).all():
        position = int(np.argmax(np.isinf(values).any(axis=1)))
        raise DataError(f"{path}: line {lines[position]} holds an infinite value; clean or drop it")
    return values


def _filled(
    path: Path, values: np.ndarray, lines: list[int], names: list[str], how: str, notes: list[str]
) -> np.ndarray:
    """Missing values refused (naming the first), or filled: never left as NaN for training."""
    missing = np.isnan(values)
    if not missing.any():
        return values
    position, channel = (int(i) for i in np.argwhere(missing)[0])
    if how == "refuse":
        raise DataError(
            f"{path}: line {lines[position]} has no value for {names[channel]} ({int(missing.sum())} missing in all); "
            "fill them, or set data.series.missing to interpolate or ffill"
        )
    for channel in range(values.shape[1]):
        column = values[:, channel]
        present = ~np.isnan(column)
        if not present.any():
            raise DataError(f"{path}: column {names[channel]} has no values at all")
        if how == "interpolate":
            steps = np.arange(len(column))
            column[~present] = np.interp(steps[~present], steps[present], column[present])
        else:  # ffill: the last value carried forward; leading gaps take the first value
            last = np.maximum.accumulate(np.where(present, np.arange(len(column)), -1))
            first = int(np.argmax(present))
            column[:] = column[np.where(last < 0, first, last)]
    notes.append(f"{int(missing.sum())} missing value(s) filled ({how}; first at line {lines[position]})")
    return values


def _labels(path: Path, rows: list[list[str]], lines: list[int], index: int) -> np.ndarray:
    labels = np.empty(len(rows), bool)
    for position, (row, line) in enumerate(zip(rows, lines, strict=True)):
        cell = row[index].strip()
        if cell in TRUE_LABELS:
            labels[position] = True
        elif cell in FALSE_LABELS:
            labels[position] = False
        else:
            raise DataError(
                f"{path}: line {line} has label {shorten(cell)}; a series' label column marks anomalous steps "
                "with 1/true and normal ones with 0/false"
            )
    return labels


def _times(path: Path, cells: list[str], lines: list[int], time_format: str | None) -> tuple[np.ndarray, str]:
    """The times, and the UTC offset they are kept in ("" when they have none): times written
    with an offset stay in the first row's offset (later rows with another offset, across a
    daylight-saving change, are converted to it), so outputs write them as the file did."""
    for cell, line in zip(cells, lines, strict=True):
        if cell in MISSING_CELLS:
            raise DataError(f"{path}: line {line} has no time; every row of a series needs one")
    if time_format is None and all(is_number(cell) for cell in cells):
        numbers = np.array([float(cell) for cell in cells])  # epoch seconds, or any numeric clock
        if not np.isfinite(numbers).all():
            line = lines[int(np.argmax(~np.isfinite(numbers)))]
            raise DataError(f"{path}: line {line}'s time is not a finite number")
        return numbers, ""
    times = np.empty(len(cells), "datetime64[ms]")
    zones: set[bool] = set()
    kept_in: dt.tzinfo | None = None
    for position, (cell, line) in enumerate(zip(cells, lines, strict=True)):
        try:
            moment = dt.datetime.strptime(cell, time_format) if time_format else dt.datetime.fromisoformat(cell)
            zones.add(moment.tzinfo is not None)
            if moment.tzinfo is not None:
                kept_in = kept_in or dt.timezone(moment.utcoffset() or dt.timedelta(0))
                moment = moment.astimezone(kept_in).replace(tzinfo=None)
        except (ValueError, OverflowError):
            expected = (
                f"the format {time_format!r}" if time_format else "an ISO 8601 time (or set data.series.time_format)"
            )
            raise DataError(f"{path}: line {line}: {shorten(cell)} is not {expected}") from None
        if len(zones) > 1:
            raise DataError(
                f"{path}: line {line}: {shorten(cell)} mixes times with and without a time zone; give every time "
                "one, or none"
            )
        times[position] = np.datetime64(moment, "ms")
    whole_seconds = (times.astype(np.int64) % 1000 == 0).all()
    return (times.astype("datetime64[s]") if whole_seconds else times), zone_text(kept_in)


def parse_moment(text: str, zone: str, unit: np.dtype) -> np.datetime64:
    """A time given on the command line or in a windows file, on a series kept in `zone`: a time
    without an offset is read in the series' own clock, one with an offset is converted to it.
    ValueError when it is not an ISO 8601 time, or has an offset and the series has none."""
    moment = dt.datetime.fromisoformat(text.strip())
    if moment.tzinfo is not None:
        if not zone:
            raise ValueError("the series' times have no UTC offset: give times without one")
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        offset = dt.timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
        moment = moment.astimezone(dt.timezone(offset)).replace(tzinfo=None)
    return np.datetime64(moment, "ms").astype(unit)


def zone_text(zone: dt.tzinfo | None) -> str:
    """ "+02:00" for a fixed UTC offset, "" for none."""
    if zone is None:
        return ""
    minutes = round((zone.utcoffset(None) or dt.timedelta(0)).total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _in_order(
    path: Path, times: np.ndarray, lines: list[int], disorder: str, notes: list[str], zone: str
) -> np.ndarray:
    """Which rows to keep: every row, unless `disorder` drops those whose time is not later than
    every time before it. aecli never reorders a series: rows stay in the order they arrived."""
    latest = np.maximum.accumulate(times)
    late = np.r_[False, times[1:] <= latest[:-1]]
    if not late.any():
        return np.ones(len(times), bool)
    at = int(np.argmax(late))
    before = at - 1
    what = "the same time as" if times[at] == times[before] else "a time earlier than"
    first = f"line {lines[at]} has {what} line {lines[before]} ({show_time(times[at], zone)})"
    if disorder == "refuse":
        raise DataError(
            f"{path}: {first}; sort the file by time, or set data.series.disorder to keep or drop such rows"
        )
    count = int(late.sum())
    if disorder == "drop":
        notes.append(f"{count} row(s) not later than the rows before them dropped (data.series.disorder), {first}")
        return ~late
    notes.append(f"{count} row(s) not later than the rows before them kept in arrival order, {first}")
    return np.ones(len(times), bool)


def _gaps(times: np.ndarray, zone: str) -> list[str]:
    if len(times) < 3:
        return []
    steps = np.diff(times).astype(np.float64)
    usual = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * usual)
    if not len(gaps):
        return []
    first = int(gaps[0])
    return [
        f"{len(gaps)} gap(s) in time (steps over {GAP_FACTOR}x the usual one); the first after "
        f"{show_time(times[first], zone)}, the longest {float(steps[gaps].max()) / usual:.0f} usual steps"
    ]


def window_starts(steps: int, size: int, stride: int, cover_end: bool = False) -> np.ndarray:
    """First step of each window; `cover_end` adds a last window ending at the last step, so
    that every step of a scored stretch is covered."""
    starts = np.arange(0, steps - size + 1, stride)
    if cover_end and len(starts) and starts[-1] != steps - size:
        starts = np.r_[starts, steps - size]
    return starts


WINDOW_CHUNK = 4096  # windows copied at a time: the float64 temporary stays small


FLOAT32 = np.dtype(np.float32)


def windows(scaled: np.ndarray, starts: np.ndarray, size: int, dtype: np.dtype = FLOAT32) -> np.ndarray:
    """(windows, size, channels) in an aligned buffer (the fast path uses float32 windows without a
    copy); refused before allocating when they would not fit in half of this machine's memory."""
    needed = len(starts) * size * scaled.shape[1] * dtype.itemsize
    if needed > memory_bytes() // 2:
        raise DataError(
            f"data.window: {len(starts):,} windows of {size} steps need {needed / 2**30:.1f} GiB as {dtype}, more "
            "than half of this machine's memory; raise data.window.stride (or shorten the windows)"
        )
    view = np.lib.stride_tricks.sliding_window_view(scaled, size, axis=0)  # (steps - size + 1, channels, size)
    out = aligned_empty((len(starts), size, scaled.shape[1]), dtype)
    for first in range(0, len(starts), WINDOW_CHUNK):
        chosen = starts[first : first + WINDOW_CHUNK]
        out[first : first + len(chosen)] = view[chosen].transpose(0, 2, 1)
    return out


def _parts(steps: int, cfg: DataConfig) -> dict[str, slice]:
    """Consecutive stretches: training first, then validation, then test (the latest)."""
    n_test = round(cfg.test_split * steps)
    n_validation = round(cfg.validation_split * steps)
    n_train = steps - n_test - n_validation
    parts = {"train": slice(0, n_train), "validation": slice(n_train, n_train + n_validation)}
    parts["test"] = slice(n_train + n_validation, steps)
    size = cfg.window.size
    for name, part in parts.items():
        length = part.stop - part.start
        if name == "validation" and cfg.validation_split == 0:
            continue
        if length < size:
            raise DataError(
                f"data.window.size {size}: the series has {steps} steps, and its {name} stretch "
                f"({_split_key(name)}) has {length}, too few for one window; use shorter windows or a longer series"
            )
    return parts


def probation_rows(rows: int) -> int:
    """NAB's probationary period: the leading rows of a file a detector may learn from, unscored."""
    return min(math.floor(PROBATION_SHARE * rows), PROBATION_MAX_ROWS)


def _first_rows(table: SeriesTable, rows: int) -> SeriesTable:
    labels = None if table.labels is None else table.labels[:rows]
    note = f"learning from the first {rows} of {len(table.values)} rows (data.series.learn: probation)"
    return replace(
        table, times=table.times[:rows], values=table.values[:rows], labels=labels, notes=[*table.notes, note]
    )


def _split_key(name: str) -> str:
    return {"train": "what the splits leave", "validation": "data.validation_split", "test": "data.test_split"}[name]


def load_series_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Windows of the series' training, validation and test stretches, scaled with the training stretch's statistics."""
    del seed  # splits are by time: nothing is drawn
    assert cfg.series is not None
    table = read_series_table(Path(cfg.source), cfg.series, cfg.label_column, cfg.limit)
    if cfg.series.learn == "probation":
        table = _first_rows(table, probation_rows(len(table.values)))
    parts = _parts(len(table.values), cfg)
    scaling = fit_channel_scaling(table.values[parts["train"]], cfg.scaling, default="zscore")
    size, stride = cfg.window.size, cfg.window.stride
    scaled = scaling.apply(table.values)
    x: dict[str, np.ndarray] = {}
    timelines: dict[str, Timeline] = {}
    for name, part in parts.items():
        steps = part.stop - part.start
        if name == "validation" and steps == 0:
            continue
        # scored stretches: every step covered, even with a stride longer than the window
        starts = window_starts(steps, size, stride if name == "train" else min(stride, size), cover_end=name != "train")
        x[name] = windows(scaled[part], starts, size)
        timelines[name] = _timeline(table, part, starts, size)
    return Dataset(
        x_train=x["train"],
        y_train=None,
        x_val=x.get("validation"),
        y_val=None,
        x_test=x["test"],
        y_test=None,
        sample_shape=(size, table.values.shape[1]),
        is_image=False,
        scaling=scaling,
        description={"source": cfg.source, "series": _describe(table), "notes": table.notes},
        source_rows={name: timeline.offset + timeline.starts for name, timeline in timelines.items()},
        ids={name: timeline.start_times() for name, timeline in timelines.items()},
        timelines=timelines,
    )


def _timeline(table: SeriesTable, part: slice, starts: np.ndarray, size: int) -> Timeline:
    return Timeline(
        times=table.times[part],
        values=table.values[part],
        starts=starts,
        size=size,
        columns=table.columns,
        timed=table.timed,
        labels=None if table.labels is None else table.labels[part],
        offset=part.start,
        zone=table.zone,
    )


def _describe(table: SeriesTable) -> dict[str, object]:
    times = time_text(table.times[[0, -1]], table.timed, table.zone)
    return {
        "steps": len(table.values),
        "channels": table.columns,
        "value_columns": table.value_columns,
        "from": times[0],
        "to": times[1],
    }


def load_series_for_model(cfg: DataConfig, sample_shape: tuple[int, ...], scaling: Scaling) -> Samples:
    """Every window of a series (the last one ending at its last step), scaled with a run's scaling."""
    assert cfg.series is not None
    table = read_series_table(Path(cfg.source), cfg.series, cfg.label_column, cfg.limit)
    size, channels = sample_shape
    if table.values.shape[1] != channels:
        raise DataError(
            f"data.source {cfg.source}: {table.values.shape[1]} value column(s) ({', '.join(table.columns)}), "
            f"but the model was trained on {channels}"
        )
    if len(table.values) < size:
        raise DataError(
            f"data.source {cfg.source}: {len(table.values)} steps, fewer than one window of {size}; "
            "a longer stretch is needed"
        )
    starts = window_starts(len(table.values), size, min(cfg.window.stride, size), cover_end=True)
    timeline = _timeline(table, slice(0, len(table.values)), starts, size)
    x = windows(scaling.apply(table.values), starts, size)
    return Samples(x, None, None, starts, timeline.start_times(), limited=cfg.limit is not None, timeline=timeline)


def series_shape(request: SourceRequest) -> tuple[int, ...]:
    assert request.series is not None and request.window is not None
    table = read_series_table(Path(request.source), request.series, request.label_column, request.limit)
    if len(table.values) < request.window.size:
        raise DataError(
            f"data.window.size {request.window.size}: the series has {len(table.values)} steps, fewer than one window"
        )
    return (request.window.size, table.values.shape[1])


def read_series_windows(request: SourceRequest) -> RawData:
    """The whole series as windows (raw values), for commands that want samples only (prepare)."""
    assert request.series is not None and request.window is not None
    table = read_series_table(Path(request.source), request.series, request.label_column, request.limit)
    size = request.window.size
    if len(table.values) < size:
        raise DataError(f"data.window.size {size}: the series has {len(table.values)} steps, too few for one window")
    starts = window_starts(len(table.values), size, request.window.stride)
    return RawData(windows(table.values, starts, size, table.values.dtype), None, None, None, sequences=True)


SOURCE_KIND = SourceKind(
    "series",
    claims=lambda request: request.series is not None,
    read=read_series_windows,
    sample_shape=series_shape,
    load=load_series_dataset,
    load_for_model=load_series_for_model,
)
