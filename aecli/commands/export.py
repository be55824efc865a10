"""`aecli export`: a trained run as one standalone graph for production (see aecli/export.py),
written to a new folder whole or not at all, with metadata.json beside the model file."""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aecli.atomic import write_json_atomic
from aecli.backend import select_backend
from aecli.calibration import threshold_in_use
from aecli.code_scores import CODE_SCORES
from aecli.errors import RunError
from aecli.export import (
    FORMATS,
    METADATA_FILE,
    UNSUPPORTED,
    ExportError,
    embed_onnx_metadata,
    export_graph,
    export_metadata,
    serving_model,
)
from aecli.interrupts import raise_pending
from aecli.trained_run import open_trained_run, refuse_text_run


@dataclass
class ExportRequest:
    run_dir: Path
    format: str
    out: Path | None = None  # default: <run>/export-<format>
    score: str | None = None
    threshold: str | None = None


@dataclass
class ExportOutcome:
    folder: Path
    model_file: Path
    metadata: dict[str, Any]


def export_run(request: ExportRequest) -> ExportOutcome:
    """Write the run's serving graph in `request.format` to a new folder (whole, or not at all)."""
    if request.format not in FORMATS:
        raise ExportError(f"--format {request.format!r}: expected one of {', '.join(FORMATS)}")
    keras_format, model_name, needs = FORMATS[request.format]
    missing = [package for package in needs if importlib.util.find_spec(package) is None]
    if missing:
        raise ExportError(f"--format {request.format} needs {', '.join(missing)}: pip install 'aecli[deploy]'")
    run = open_trained_run(request.run_dir)
    refuse_text_run(run, "export")
    kind = run.config.model.kind
    if (request.format, kind) in UNSUPPORTED:
        raise ExportError(
            f"model kind {kind} cannot be exported to litert: its recurrent loop needs TensorFlow's Select ops, "
            "which the LiteRT runtime does not run; export savedmodel or onnx"
        )
    out = request.out or run.path / f"export-{request.format}"
    if out.exists():
        raise RunError(f"--out {out}: already exists; export writes a new folder")
    if not out.parent.is_dir():
        raise RunError(f"--out {out}: no folder {out.parent}")
    in_use = threshold_in_use(run.path, run.metrics, request.score, request.threshold)
    if in_use.score in CODE_SCORES:
        raise ExportError(
            f"score {in_use.score}: an exported graph computes a reconstruction error, not a search of the training "
            f"codes; export with --score mse (or mae), or score {in_use.score} with aecli score or aecli serve"
        )
    # Export converts through TensorFlow whatever backend trained the run: .keras files are portable.
    select_backend("tensorflow")
    model = serving_model(run, in_use)
    metadata = export_metadata(run, in_use, request.format, model_name)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as temp:
        staged = Path(temp) / out.name
        staged.mkdir()
        export_graph(model, staged / model_name, keras_format, run)
        if request.format == "onnx":
            embed_onnx_metadata(staged / model_name, metadata)
        write_json_atomic(staged / METADATA_FILE, metadata)
        raise_pending()  # a swallowed Ctrl-C: nothing exported
        staged.rename(out)
    return ExportOutcome(out, out / model_name, metadata)
