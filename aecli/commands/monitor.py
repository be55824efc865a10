"""`aecli monitor`: score a live series as its rows arrive (a file, or stdin fed by `tail -f`).

One output line per input row, written as soon as the rows that arrived together are scored:
the input line, its time as written, its values, the score (from the rows up to it only) and
the flag at the run's threshold. Memory is bounded: a partial line, the last window and the
likelihood's history. A malformed row is reported on stderr with its line number and counted,
and the stream goes on: a monitor must not die on one bad line.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from aecli.atomic import write_json_atomic
from aecli.backend import select_backend
from aecli.calibration import InUse, threshold_in_use
from aecli.data.files import column_index
from aecli.data.labels import is_number
from aecli.errors import DataError, EvaluationError, RunError, clip
from aecli.interrupts import deferred_interrupts
from aecli.stream_scoring import StreamScorer
from aecli.trained_run import TrainedRun, load_model, open_trained_run

READ_BYTES = 1 << 16  # what one read takes from the input: everything that arrived, up to this
MAX_LINE_BYTES = 1 << 20  # a longer line is reported and skipped, never held in memory
MAX_STATE_BYTES = 64 << 20  # a state file holds a window and the likelihood's history: far less
FORMATS = ("csv", "jsonl")
ERROR_SCORES = ("mse", "mae", "bce")


@dataclass
class MonitorRequest:
    run_dir: Path
    source: str  # a CSV file, or "-": stdin
    out: Path | None = None  # default: stdout
    output_format: str = "csv"
    threshold: str | None = None
    backend: str | None = None
    state: Path | None = None  # read when it exists, written when the monitor stops: a restart continues


@dataclass
class MonitorOutcome:
    rows: int = 0
    flagged: int = 0
    malformed: int = 0
    threshold: float = math.nan
    method: str = ""


@dataclass
class _Layout:
    """Where a row's time and values are, read from the header (or the run's column numbers)."""

    width: int
    time: int | None
    values: list[int]
    names: list[str]


def monitor_stream(request: MonitorRequest, stdin: IO[bytes], stdout: IO[str], stderr: IO[str]) -> MonitorOutcome:
    """Score every row of the request's input as it arrives; returns the counts when the input
    ends (an interrupt leaves what was written so far, every line whole, and the state saved)."""
    run, in_use, source = _checked(request, stderr)
    select_backend(request.backend or run.config.runtime.backend)
    model = load_model(run.path / "model.keras", compile=False)
    scorer = StreamScorer(model, run.scaling, run.sample_shape, in_use.score, run.config.anomaly.likelihood)
    if request.state is not None and request.state.exists():
        _restore(scorer, request.state, run)
    outcome = MonitorOutcome(threshold=in_use.value, method=in_use.method)
    try:
        with _input(source, stdin) as handle, _destination(request.out, stdout) as out:
            lines = _lines(handle, stderr, outcome)
            layout, leftover = _layout(run, lines, request.source)
            writer = _Writer(out, request.output_format, layout.names)
            for numbers, times, values in _arrivals(_chained(leftover, lines), layout, stderr, outcome):
                with deferred_interrupts():  # a row is scored and written, or neither: the state matches the output
                    scores = scorer.score(values)
                    flags = np.nan_to_num(scores, nan=-np.inf) > in_use.value
                    writer.write(numbers, times, values, scores, flags)
                    outcome.rows += len(numbers)
                    outcome.flagged += int(flags.sum())
    finally:
        if request.state is not None:
            with deferred_interrupts():
                write_json_atomic(request.state, {"run": run.info.get("config_sha256"), **scorer.state()})
    return outcome


def _checked(request: MonitorRequest, stderr: IO[str]) -> tuple[TrainedRun, InUse, Path | None]:
    """The run, its threshold and the input, checked before the model is loaded."""
    if request.output_format not in FORMATS:
        raise EvaluationError(f"--format {request.output_format!r}: expected one of {', '.join(FORMATS)}")
    for path, option in ((request.out, "--out"), (request.state, "--state")):
        if path is not None and not path.parent.is_dir():
            raise RunError(f"{option} {path}: no folder {path.parent}")
    if request.out is not None and request.out.exists():
        raise RunError(f"--out {request.out}: already exists; monitor writes a new file")
    run = open_trained_run(request.run_dir, needs=("train_errors.csv",))
    if run.config.data.series is None:
        raise RunError(f"run {run.path}: monitor scores series runs (data.series); use aecli score for rows")
    in_use = threshold_in_use(run.path, run.metrics, None, request.threshold)
    if in_use.score not in ERROR_SCORES:
        raise EvaluationError(f"monitor scores reconstruction errors ({', '.join(ERROR_SCORES)}), not {in_use.score}")
    if run.config.anomaly.likelihood is not None and request.threshold is not None and not is_number(request.threshold):
        raise EvaluationError(
            f"--threshold {request.threshold}: this run scores likelihoods (anomaly.likelihood): give a number, "
            "e.g. 0.5"
        )
    if (run.config.anomaly.points or "last") != "last":
        stderr.write(
            f"note: the run evaluates with anomaly.points {run.config.anomaly.points}; monitor scores each row by "
            "the window that ends at it (last): a live stream has no later rows\n"
        )
    source = None if request.source == "-" else Path(request.source)
    if source is not None and (not source.exists() or source.is_dir()):  # a named pipe is welcome
        raise DataError(f"{request.source}: no such file" if not source.exists() else f"{source}: is a folder")
    return run, in_use, source


def _restore(scorer: StreamScorer, path: Path, run: TrainedRun) -> None:
    """Continue from a state file an earlier monitor of this run wrote."""
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES // 2**20} MiB")
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("run") != run.info.get("config_sha256"):
            raise ValueError("it was written for another run (or is not a monitor state)")
        scorer.restore(state)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"--state {path}: cannot continue from it: {clip(str(exc))}") from None


@contextlib.contextmanager
def _input(source: Path | None, stdin: IO[bytes]) -> Iterator[IO[bytes]]:
    if source is None:
        yield stdin
        return
    try:
        handle = source.open("rb", buffering=0)
    except OSError as exc:
        raise DataError(f"{source}: cannot read it ({exc.strerror})") from None
    with handle:
        yield handle


@contextlib.contextmanager
def _destination(out: Path | None, stdout: IO[str]) -> Iterator[IO[str]]:
    if out is None:
        yield stdout
        return
    with out.open("x", encoding="utf-8", newline="") as handle:  # "x": never over a file that appeared since
        yield handle


# Reading: everything that has arrived, split into whole lines


_Line = tuple[int, str]
_Arrival = list[_Line]


def _lines(handle: IO[bytes], stderr: IO[str], outcome: MonitorOutcome) -> Iterator[_Arrival]:
    """The lines of each read, numbered from 1, decoded; a line that is not UTF-8 or longer
    than MAX_LINE_BYTES is reported and skipped."""
    pending = b""
    number = 0
    skipping = False  # inside an overlong line: drop bytes up to its end
    read = _reader(handle)
    while True:
        chunk = read()
        if not chunk:
            break
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        arrival: _Arrival = []
        for raw in parts:
            number += 1
            if skipping:
                skipping = False
                continue
            text = _decoded(raw, number, stderr, outcome)
            if text is not None:
                arrival.append((number, text))
        if len(pending) > MAX_LINE_BYTES:
            if not skipping:
                _report(stderr, outcome, number + 1, f"longer than {MAX_LINE_BYTES // 2**20} MiB: skipped")
            skipping, pending = True, b""
        if arrival:
            yield arrival
    if pending and not skipping:
        text = _decoded(pending, number + 1, stderr, outcome)
        if text is not None:
            yield [(number + 1, text)]


def _reader(handle: IO[bytes]) -> Callable[[], bytes]:
    """Reads whatever has arrived (up to READ_BYTES) without waiting for more: os.read on a file
    descriptor; read1 on an in-memory stream (tests)."""
    try:
        fd = handle.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return lambda: handle.read1(READ_BYTES)  # type: ignore[attr-defined]
    return lambda: os.read(fd, READ_BYTES)


def _decoded(raw: bytes, number: int, stderr: IO[str], outcome: MonitorOutcome) -> str | None:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        _report(stderr, outcome, number, "not UTF-8: skipped")
        return None


def _report(stderr: IO[str], outcome: MonitorOutcome, number: int, problem: str) -> None:
    outcome.malformed += 1
    stderr.write(f"line {number}: {problem}\n")
    stderr.flush()


def _layout(run: TrainedRun, lines: Iterator[_Arrival], source: str) -> tuple[_Layout, list[_Arrival]]:
    """The columns of the run's series, found by name in the input's header (the first line),
    and the rest of the first arrival (rows to score)."""
    series = run.config.data.series
    assert series is not None
    recorded = run.info.get("data", {}).get("series", {}).get("value_columns") or []
    first: _Arrival = []
    while not first:  # blank lines before the header are skipped
        arrival = next(lines, None)
        if arrival is None:
            raise DataError(f"{source}: empty: expected a header line, then rows")
        first = list(itertools.dropwhile(lambda line: not line[1].strip(), arrival))
    (number, text), rest = first[0], first[1:]
    header = next(csv.reader([text]))
    named = all(isinstance(column, str) for column in recorded)
    header_names = [cell.strip() for cell in header] if named else None
    leftover = [rest] if named else [first]  # a headerless run: the first line is already a row
    width = len(header)
    path = Path(source)
    time = column_index(path, header_names, width, series.time_column, "series.time_column")
    values = [column_index(path, header_names, width, column, "series.value_columns") for column in recorded]
    if len(values) != run.sample_shape[-1] or any(index is None for index in values):
        raise DataError(f"{source}: line {number}: the run reads the columns {recorded}; this input has {header}")
    names = [str(column) for column in recorded]
    return _Layout(width, time, [index for index in values if index is not None], names), leftover


def _arrivals(
    lines: Iterator[_Arrival], layout: _Layout, stderr: IO[str], outcome: MonitorOutcome
) -> Iterator[tuple[list[int], list[str], np.ndarray]]:
    """Per arrival, the well-formed rows: their line numbers, times (as written) and values."""
    for arrival in lines:
        numbers: list[int] = []
        times: list[str] = []
        rows: list[list[float]] = []
        for number, text in arrival:
            if not text.strip():
                continue
            cells = next(csv.reader([text]))
            if len(cells) != layout.width:
                _report(stderr, outcome, number, f"{len(cells)} columns, expected {layout.width}: skipped")
                continue
            try:
                row = [float(cells[index]) for index in layout.values]
            except ValueError:
                _report(stderr, outcome, number, "a value is not a number: skipped")
                continue
            if not all(math.isfinite(value) for value in row):
                _report(stderr, outcome, number, "a value is NaN or infinite: skipped")
                continue
            numbers.append(number)
            times.append(cells[layout.time].strip() if layout.time is not None else str(number))
            rows.append(row)
        if numbers:
            yield numbers, times, np.asarray(rows, np.float64)


def _chained(queued: list[_Arrival], lines: Iterator[_Arrival]) -> Iterator[_Arrival]:
    yield from queued
    yield from lines


class _Writer:
    def __init__(self, out: IO[str], output_format: str, names: list[str]) -> None:
        self.out = out
        self.as_json = output_format == "jsonl"
        self.names = names
        self.csv = csv.writer(out, lineterminator="\n")
        if not self.as_json:
            self.csv.writerow(["line", "time", *names, "score", "flagged"])
            out.flush()

    def write(
        self, numbers: list[int], times: list[str], values: np.ndarray, scores: np.ndarray, flags: np.ndarray
    ) -> None:
        for number, moment, row, score, flag in zip(numbers, times, values, scores, flags, strict=True):
            shown = None if math.isnan(score) else float(f"{score:.8g}")
            if self.as_json:
                entry = {"line": number, "time": moment, **dict(zip(self.names, row.tolist(), strict=True))}
                self.out.write(json.dumps({**entry, "score": shown, "flagged": bool(flag)}) + "\n")
            else:
                cells = [f"{value:.8g}" for value in row]
                self.csv.writerow([number, moment, *cells, "" if shown is None else f"{score:.8g}", int(flag)])
        self.out.flush()
