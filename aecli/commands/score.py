"""`aecli score`: score new data with a trained run, in bounded memory, to a file or stdout.

Per row: where it came from (source_row, and id or label when the input has them), the run's
error measure, the flag at the run's threshold (its calibrated one, thresholds.json, unless
--threshold says otherwise), and the input elements that contributed most to the error.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from aecli.atomic import atomic_path
from aecli.backend import select_backend
from aecli.calibration import chosen_score, threshold_in_use
from aecli.code_scores import code_space_of
from aecli.errors import DataError, EvaluationError, RunError
from aecli.evaluation import CALL_ROWS, predict_fixed
from aecli.interrupts import raise_pending
from aecli.scoring import (
    CHUNK_ROWS,
    Chunk,
    CodeScorer,
    Columns,
    Scored,
    array_chunks,
    csv_chunks,
    element_names,
    format_top,
    jsonl_chunks,
    looks_like_json_lines,
    score_chunks,
)
from aecli.trained_run import TrainedRun, load_model, open_trained_run, refuse_text_run


@dataclass
class ScoreRequest:
    run_dir: Path
    source: str  # a data source, or "-": CSV or JSON lines on stdin
    out: Path | None = None  # default: stdout
    batch_size: int = CALL_ROWS  # rows per model call: CALL_ROWS gives serve's and evaluate's bits
    top_k: int = 3
    score: str | None = None
    threshold: str | None = None
    id_column: str | None = None
    chunk_rows: int = CHUNK_ROWS
    backend: str | None = None  # default: the run's


@dataclass
class ScoreOutcome:
    rows: int
    flagged: int
    score: str
    threshold: float
    method: str


def score_input(request: ScoreRequest, stdin: IO[str], stdout: IO[str]) -> ScoreOutcome:
    """Score every row of the request's input; results go to `request.out` (written whole or not
    at all) or, row by row, to `stdout`."""
    if request.batch_size < 1 or request.top_k < 0:
        raise EvaluationError("--batch-size must be >= 1 and --top-k >= 0")
    if request.out is not None and request.out.exists():
        raise RunError(f"--out {request.out}: already exists; score writes a new file")
    if request.out is not None and not request.out.parent.is_dir():
        raise RunError(f"--out {request.out}: no folder {request.out.parent}")
    run = open_trained_run(request.run_dir, needs=("train_errors.csv",))
    refuse_text_run(run, "score")
    if run.config.data.series is not None:
        return _score_series(run, request, stdin, stdout)
    in_use = threshold_in_use(run.path, run.metrics, request.score, request.threshold)
    score, threshold, method = in_use.score, in_use.value, in_use.method
    names, chunks, as_json = _chunks(run, request, stdin)
    select_backend(request.backend or run.config.runtime.backend)
    model = load_model(run.path / "model.keras", compile=False)
    code_scorer = _code_scorer(run, score, request.batch_size)
    scored = score_chunks(
        chunks,
        lambda x: predict_fixed(model, x, request.batch_size),
        run.sample_shape,
        run.scaling,
        score,
        threshold,
        element_names(run.sample_shape, names),
        request.top_k,
        "stdin" if request.source == "-" else request.source,
        code_scorer,
    )
    with _destination(request.out, stdout) as handle:
        rows, flagged = _write(scored, handle, score, as_json)
    return ScoreOutcome(rows, flagged, score, threshold, method)


def _score_series(run: TrainedRun, request: ScoreRequest, stdin: IO[str], stdout: IO[str]) -> ScoreOutcome:
    """A series run's rows are steps in time: each is scored from the rows up to it, as aecli
    monitor does (its output columns), to stdout or, whole or not at all, to --out."""
    from aecli.commands.monitor import MonitorRequest, monitor_stream

    if request.score is not None and request.score != chosen_score(None, run.metrics):
        raise EvaluationError(f"--score {request.score}: a series run is scored by its own score, row by row")
    monitor = MonitorRequest(run.path, request.source, None, "csv", request.threshold, request.backend)
    raw_stdin: IO[bytes] = stdin.buffer  # type: ignore[attr-defined]  # sys.stdin: monitor reads bytes
    if request.out is None:
        outcome = monitor_stream(monitor, raw_stdin, stdout, sys.stderr)
    else:
        with atomic_path(request.out) as temp, temp.open("w", encoding="utf-8", newline="") as handle:
            outcome = monitor_stream(monitor, raw_stdin, handle, sys.stderr)
    score = chosen_score(None, run.metrics)
    return ScoreOutcome(outcome.rows, outcome.flagged, score, outcome.threshold, outcome.method)


def _code_scorer(run: TrainedRun, score: str, batch_size: int) -> CodeScorer | None:
    """The encoder and training codes a knn or combined score needs (None for the others)."""
    space = code_space_of(run.path, score)
    if space is None:
        return None
    encoder = load_model(run.path / "encoder.keras", compile=False)
    return CodeScorer(lambda x: predict_fixed(encoder, x, batch_size), space)


def _chunks(run: TrainedRun, request: ScoreRequest, stdin: IO[str]) -> tuple[list[str] | None, Iterator[Chunk], bool]:
    """Feature names (for tables), the input's chunks, and whether it is JSON lines."""
    own, asked = run.config.data, request.id_column
    columns = Columns(
        asked or own.id_column,
        own.label_column,
        dropped=(own.id_column,) if asked and own.id_column is not None else (),  # never a feature
        required=(asked,) if asked else (),
        features=run.feature_names,
    )
    source = request.source
    if source == "-":
        stream, head = _stdin_lines(stdin)
        reader = jsonl_chunks if looks_like_json_lines(head) else csv_chunks
        names, chunks = reader(stream, "stdin", columns, request.chunk_rows)
        return names, chunks, reader is jsonl_chunks
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".ndjson") and path.is_file():
        handle = _opened(path)
        reader = csv_chunks if suffix == ".csv" else jsonl_chunks
        names, chunks = reader(handle, source, columns, request.chunk_rows)
        return names, _closing(chunks, handle), reader is jsonl_chunks
    if suffix == ".npy" and path.is_file():
        try:  # memory-mapped: read a chunk at a time
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{source}: not a readable .npy file ({exc})") from None
        if array.dtype.kind not in "biuf" or array.ndim < 2:
            raise DataError(f"{source}: expected numeric rows, got shape {array.shape} ({array.dtype})")
        return None, array_chunks(array, request.chunk_rows), False
    samples = run.read_samples(source, [], "INPUT")  # any other source the run reads: whole, then chunked
    return None, array_chunks(samples.x, request.chunk_rows, scaled=True), False


def _stdin_lines(stdin: IO[str]) -> tuple[Iterator[str], str]:
    """stdin's lines (a byte-order mark dropped, blank lines kept so that line numbers stay
    true) and its first non-blank line, which says whether it is CSV or JSON lines."""
    lines, skipped = iter(stdin), list[str]()
    try:
        for line in lines:
            if line.strip():
                head = line.removeprefix("\ufeff")
                return itertools.chain(skipped, [head], lines), head
            skipped.append(line)
    except UnicodeDecodeError as exc:
        raise DataError(f"stdin: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    raise DataError("stdin: no rows to score")


def _opened(path: Path) -> IO[str]:
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot open it ({exc.strerror or exc})") from None


def _closing(chunks: Iterator[Chunk], handle: IO[str]) -> Iterator[Chunk]:
    with handle:
        yield from chunks


@contextlib.contextmanager
def _destination(out: Path | None, stdout: IO[str]) -> Iterator[IO[str]]:
    """stdout, or a new file that appears only once every row is written."""
    if out is None:
        yield stdout
        return
    with atomic_path(out) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        yield handle


def _write(scored: Iterator[Scored], handle: IO[str], score: str, as_json: bool) -> tuple[int, int]:
    """Rows out as they are scored: CSV (or JSON lines for JSON-lines input); the counts."""
    writer = None if as_json else csv.writer(handle, lineterminator="\n")
    rows = flagged = 0
    for part in scored:
        chunk = part.chunk
        if writer is not None and rows == 0:
            writer.writerow(_header(chunk, score))
        for i in range(len(part.scores)):
            origin: dict[str, Any] = {"source_row": chunk.first + i}
            if chunk.ids is not None:
                origin["id"] = chunk.ids[i]
            if chunk.labels is not None:
                origin["label"] = chunk.labels[i]
            flag = int(part.flagged[i])
            if writer is None:
                top = dict(part.top[i])
                record = {**origin, score: float(part.scores[i]), "flagged": flag, "top_features": top}
                handle.write(json.dumps(record) + "\n")
            else:
                writer.writerow([*origin.values(), f"{part.scores[i]:.8g}", flag, format_top(part.top[i])])
        rows += len(part.scores)
        flagged += int(part.flagged.sum())
        handle.flush()  # a pipeline downstream sees each chunk as soon as it is scored
        raise_pending()  # a Ctrl-C that TensorFlow swallowed still stops the scoring (and --out is not written)
    return rows, flagged


def _header(chunk: Chunk, score: str) -> list[str]:
    return [
        "source_row",
        *(["id"] if chunk.ids is not None else []),
        *(["label"] if chunk.labels is not None else []),
        score,
        "flagged",
        "top_features",
    ]
