"""`aecli embed`: the latent code of every sample of an input, one row per sample in input order.

The input is read the way the run read its data (a series file is cut into the run's windows;
a CSV keeps the run's label and id columns), encoded in batches, and written as .npy (codes
only) or .csv (ids, labels and codes). Nothing is written unless everything was computed, and an
existing file is never replaced.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aecli.atomic import atomic_path
from aecli.backend import select_backend
from aecli.data import Samples, label_name, load_for_model
from aecli.errors import DataError, EvaluationError, RunError
from aecli.evaluation import predict_batched
from aecli.interrupts import raise_pending
from aecli.trained_run import load_encoder, load_model, open_trained_run

FORMATS = (".npy", ".csv")


@dataclass
class EmbedRequest:
    run_dir: Path
    input: str
    out: Path | None = None
    data_overrides: list[str] = field(default_factory=list)
    batch_size: int = 4096
    backend: str | None = None
    progress: Callable[[int], None] | None = None  # texts encoded so far, after each chunk of a text input


@dataclass
class EmbedOutcome:
    out: Path
    rows: int
    dimensions: int


def embed(request: EmbedRequest) -> EmbedOutcome:
    run = open_trained_run(request.run_dir)
    select_backend(request.backend or run.config.runtime.backend)
    out = request.out or run.path / f"embeddings-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    if out.suffix.lower() not in FORMATS:
        raise EvaluationError(f"--out {out}: expected a .npy or .csv file name")
    if out.exists():
        raise RunError(f"--out {out}: already exists; embed writes a new file (choose another name)")
    if not out.parent.is_dir():
        raise RunError(f"--out {out}: no folder {out.parent}")
    if request.batch_size < 1:
        raise EvaluationError(f"--batch-size {request.batch_size}: expected a positive number")
    cfg = run.data_config_for(request.input, request.data_overrides, "embed")
    if cfg.text is not None:
        from aecli.commands.embed_text import embed_texts

        rows, dimensions = embed_texts(cfg, load_encoder(run.path), out, request.batch_size, request.progress)
        return EmbedOutcome(out, rows, dimensions)
    try:
        samples = load_for_model(cfg, run.sample_shape, run.scaling)
    except DataError as exc:
        raise DataError(str(exc).replace("data.source", "input", 1)) from None
    encoder = load_model(run.path / "encoder.keras", compile=False)
    codes = predict_batched(encoder, samples.x, request.batch_size)
    codes = codes.reshape(len(codes), -1)  # a feature-map code (model.code feature_map), flattened
    raise_pending()  # a Ctrl-C that TensorFlow swallowed: no embeddings written
    if out.suffix.lower() == ".npy":
        with atomic_path(out) as temp:
            np.save(temp, codes)
    else:
        _write_csv(out, samples, codes)
    return EmbedOutcome(out, len(codes), codes.shape[1])


def _write_csv(out: Path, samples: Samples, codes: np.ndarray) -> None:
    """One row per sample: where it came from (source_row, and its id or window start), its
    label when the data has labels, then the code."""
    origin = samples.origin()
    labelled = samples.y is not None
    with atomic_path(out) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        header = [*origin, *(["label"] if labelled else []), *(f"z{i}" for i in range(codes.shape[1]))]
        writer.writerow(header)
        for index in range(len(codes)):
            label = [label_name(samples.y[index], samples.label_names)] if samples.y is not None else []
            code = [f"{value:.8g}" for value in codes[index]]
            writer.writerow([*(column[index] for column in origin.values()), *label, *code])
