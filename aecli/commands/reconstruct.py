"""`aecli reconstruct`: run given inputs through a trained autoencoder (optionally corrupted first).

Inputs are image files (resized and converted to the model's channels), data files (IDX,
.npz, .npy, .csv) or indices of the run's test split. Everything is loaded and checked
before the output folder is created.
"""

from __future__ import annotations

import csv
import functools
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.atomic import save_atomic, write_text_atomic
from aecli.backend import select_backend
from aecli.data import label_name, load_for_model
from aecli.data.arrays import Timeline
from aecli.errors import DataError, EvaluationError, clip
from aecli.evaluation import PSNR_CAP_DB, is_unit_range, per_sample_errors, predict_batched
from aecli.noise import NoiseSpec, corrupt, parse_noise
from aecli.reporting import (
    plot_feature_rows,
    plot_image_rows,
    plot_series_reconstruction,
    write_series_reconstruction,
)
from aecli.runs import StagedOutputDir, check_new_output_dir
from aecli.time_anomalies import stitch_windows, stretch_steps
from aecli.trained_run import TrainedRun, load_model, open_trained_run

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GRID_COLUMNS = 16  # the side-by-side grid shows the first inputs only; every file is still written


@dataclass
class ReconstructRequest:
    run_dir: Path
    inputs: list[Path] = field(default_factory=list)
    indices: list[int] | None = None
    out: Path | None = None
    noise: str | None = None
    save_latent: bool = False
    seed: int = 0
    backend: str | None = None
    data_overrides: list[str] = field(default_factory=list)  # how to read INPUT data files
    force: bool = False  # --indices: rebuild the test split even if the data files changed
    time_range: str | None = None  # series runs: "START,END" of the stretch to reconstruct
    texts: list[str] = field(default_factory=list)  # text runs: texts given on the command line


@dataclass
class ReconstructOutcome:
    out_dir: Path
    n_inputs: int
    mean_mse: float
    psnr_noisy: float | None = None
    psnr_reconstructed: float | None = None
    notes: list[str] = field(default_factory=list)  # what was done to the inputs that a user should know
    steps: int | None = None  # a stretch of a series: how many steps were rebuilt from the windows
    texts: list[dict[str, Any]] | None = None  # a text run: each text and its reconstruction


@dataclass
class _Inputs:
    x: np.ndarray
    names: list[str]
    labels: list[str]
    source_rows: list[str]  # the row in the input's file or the run's source ("" for image files)
    notes: list[str] = field(default_factory=list)
    timeline: Timeline | None = None  # one stretch of a series: its windows are the samples
    shown: slice = field(default_factory=lambda: slice(None))  # the steps asked for (--range)


def reconstruct(request: ReconstructRequest) -> ReconstructOutcome:
    """Everything is read and computed first; the outputs are written into a hidden folder that
    becomes the output folder only when complete."""
    run = open_trained_run(request.run_dir)
    select_backend(request.backend or run.config.runtime.backend)
    if run.config.data.text is not None:
        from aecli.commands.reconstruct_text import reconstruct_texts

        check_new_output_dir(request.out)
        found = reconstruct_texts(run, request)
        return ReconstructOutcome(found.out_dir, len(found.rows), 0.0, texts=found.rows)
    if request.texts:
        raise EvaluationError("--text: applies to runs trained on texts (data.text)")
    noise = parse_noise(request.noise) if request.noise else None
    if request.time_range is not None and run.config.data.series is None:
        raise EvaluationError("--range: applies to runs trained on a series (data.series) only")
    if not request.inputs and request.indices is None and request.time_range is None:
        raise EvaluationError("give at least one INPUT file or --indices of the run's test split")
    check_new_output_dir(request.out)
    inputs = _load_series_stretch(run, request) if run.config.data.series is not None else None
    inputs = inputs or _load_inputs(run, request)
    clean = inputs.x
    if noise and not is_unit_range(clean):
        raise EvaluationError(f"--noise {noise}: needs inputs scaled to [0, 1], and this run's data is not")
    fed = corrupt(clean, noise, np.random.default_rng(request.seed)) if noise else clean

    model = load_model(run.path / "model.keras", compile=False)
    reconstructions = predict_batched(model, fed)
    codes = predict_batched(load_model(run.path / "encoder.keras", compile=False), fed) if request.save_latent else None
    after = per_sample_errors(clean, reconstructions)["mse"]
    before = per_sample_errors(clean, fed)["mse"] if noise else None

    is_image = len(run.sample_shape) == 3
    staged = StagedOutputDir(request.out, run.path, "reconstruct")
    with staged as out_dir:
        _write_outputs(out_dir, run, inputs, fed if noise else None, reconstructions, is_image)
        _write_table(out_dir / "reconstructions.csv", inputs, after, before)
        if inputs.timeline is not None:
            stitched = stitch_windows(run.scaling.invert(reconstructions), inputs.timeline)[inputs.shown]
            shown = inputs.timeline.steps(inputs.shown)
            write_series_reconstruction(out_dir / "series.csv", shown, stitched)
            plot_series_reconstruction(shown, stitched, len(inputs.x), out_dir / "reconstructions.png")
        else:
            _plot_grid(
                out_dir / "reconstructions.png", inputs, fed if noise else None, reconstructions, is_image, noise
            )
        if codes is not None:
            save_atomic(out_dir / "latent.npy", lambda path: np.save(path, codes))
    return ReconstructOutcome(
        staged.final or out_dir,
        len(clean),
        float(np.mean(after)),
        None if before is None else _mean_psnr(before),
        None if before is None else _mean_psnr(after),
        inputs.notes,
        None if inputs.timeline is None else len(inputs.timeline.times[inputs.shown]),
    )


def _load_series_stretch(run: TrainedRun, request: ReconstructRequest) -> _Inputs | None:
    """A series run given one series file (or --range alone: the run's own source): the windows
    of that series overlapping --range (all of them without it), with their timeline."""
    if request.indices is not None and request.time_range is None:
        return None  # windows of the run's test split, as for any run
    if len(request.inputs) > 1 or request.indices is not None:
        raise EvaluationError(
            "a series run reconstructs one series file at a time (all of it, or --range START,END of it), or "
            "--indices of its test windows"
        )
    source = str(request.inputs[0]) if request.inputs else run.config.data.source
    if request.inputs and not request.inputs[0].exists():
        raise EvaluationError(f"input not found: {request.inputs[0]}")
    cfg = run.data_config_for(source, request.data_overrides, "reconstruct")
    try:
        samples = load_for_model(cfg, run.sample_shape, run.scaling)
    except DataError as exc:
        raise DataError(str(exc).replace("data.source", "input", 1)) from None
    timeline = samples.timeline
    assert timeline is not None
    chosen = np.arange(len(timeline.starts))
    shown = slice(None)
    if request.time_range is not None:
        first, last = stretch_steps(request.time_range, timeline)
        ends = timeline.starts + timeline.size - 1
        chosen = np.flatnonzero((timeline.starts <= last) & (ends >= first))
        if not len(chosen):
            raise EvaluationError(f"--range {request.time_range}: no window of {Path(source).name} overlaps it")
        timeline = timeline.cut(chosen)
        shown = slice(max(first - timeline.offset, 0), last - timeline.offset + 1)
    ids = samples.ids if samples.ids is not None else samples.source_rows.astype(str)
    name = Path(source).name
    return _Inputs(
        samples.x[chosen],
        [f"{name}[{ids[i]}]" for i in chosen],
        [""] * len(chosen),
        [str(samples.source_rows[i]) for i in chosen],
        timeline=timeline,
        shown=shown,
    )


def _load_inputs(run: TrainedRun, request: ReconstructRequest) -> _Inputs:
    parts: list[_Inputs] = []
    for path in request.inputs:
        if not path.exists():
            raise EvaluationError(f"input not found: {path}")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image, note = _read_image(path, run.sample_shape)
            parts.append(_Inputs(image[None], [path.name], [""], [""], [note] if note else []))
            continue
        cfg = run.data_config_for(str(path), request.data_overrides, "reconstruct")
        try:
            samples = load_for_model(cfg, run.sample_shape, run.scaling)
        except DataError as exc:
            raise DataError(str(exc).replace("data.source", "input", 1)) from None
        names = samples.label_names
        labels = [""] * len(samples.x) if samples.y is None else [label_name(i, names) for i in samples.y.tolist()]
        rows = samples.source_rows.tolist() if samples.ids is None else samples.ids.tolist()
        parts.append(
            _Inputs(samples.x, [f"{path.name}[{row}]" for row in rows], labels, [str(r) for r in samples.source_rows])
        )
    if request.indices is not None:
        dataset = run.test_split(request.force)
        bad = [i for i in request.indices if not 0 <= i < len(dataset.x_test)]
        if bad:
            raise EvaluationError(f"--indices {bad}: the run's test split has indices 0..{len(dataset.x_test) - 1}")
        labels = (
            [""] * len(request.indices)
            if dataset.y_test is None
            else [label_name(dataset.y_test[i], dataset.label_names) for i in request.indices]
        )
        rows = dataset.source_rows.get("test")
        parts.append(
            _Inputs(
                dataset.x_test[request.indices],
                [f"test[{i}]" for i in request.indices],
                labels,
                ["" if rows is None else str(rows[i]) for i in request.indices],
            )
        )
    return _Inputs(
        np.concatenate([part.x for part in parts]),
        [name for part in parts for name in part.names],
        [label for part in parts for label in part.labels],
        [row for part in parts for row in part.source_rows],
        [note for part in parts for note in part.notes],
    )


def _read_image(path: Path, sample_shape: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
    """An image file as the model's input, in [0, 1] at its full bit depth (8 or 16 bits), with
    1 or 3 channels, resized to the model's height x width; the note says when it was resized."""
    from PIL import Image

    if len(sample_shape) != 3:
        raise EvaluationError(
            f"{path.name}: this run's model takes {sample_shape[0]} tabular features, not images; "
            f"give a data file (.npy, .csv, ...) instead"
        )
    height, width, channels = sample_shape
    if channels not in (1, 3):
        raise EvaluationError(f"{path.name}: the model expects {channels}-channel images, which image files lack")
    try:
        with warnings.catch_warnings():
            # over 89 million pixels: refused (PIL only warns below twice that) rather than decoded
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                array, size = _pixels(image, channels)
    except Exception as exc:  # PIL's decoders raise many types on damaged chunks (SyntaxError, IndexError...)
        reason = clip(str(exc) or type(exc).__name__)
        raise EvaluationError(f"{path}: cannot read it as an image ({reason})") from None
    note = None
    if size != (width, height):
        aspect = " (its aspect ratio changed)" if size[0] * height != size[1] * width else ""
        note = f"{path.name}: resized from {size[0]}x{size[1]} to {width}x{height}{aspect}"
        array = _resize(array, width, height)
    return array.reshape(sample_shape), note


def _pixels(image: Any, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixels in [0, 1] as float32 (height, width[, 3]); 16-bit greyscale keeps its 65,536 levels."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I") and channels == 1:
        raw = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or raw.max() > 255 else 255.0
        return np.clip(raw / top, 0, 1).astype(np.float32), image.size
    if image.mode == "F" and channels == 1:  # float pixels (a TIFF): taken as they are, in [0, 1]
        return np.clip(np.asarray(image, dtype=np.float32), 0, 1), image.size
    converted = image.convert("L" if channels == 1 else "RGB")
    return np.asarray(converted, dtype=np.float32) / 255.0, image.size


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    planes = array[..., None] if array.ndim == 2 else array
    resized = [
        np.asarray(Image.fromarray(planes[..., c], mode="F").resize((width, height), Image.Resampling.LANCZOS))
        for c in range(planes.shape[-1])
    ]
    return np.clip(np.stack(resized, axis=-1), 0, 1).astype(np.float32)


def _write_outputs(
    out_dir: Path,
    run: TrainedRun,
    inputs: _Inputs,
    noisy: np.ndarray | None,
    reconstructions: np.ndarray,
    is_image: bool,
) -> None:
    if not is_image:
        original_units = run.scaling.invert(reconstructions)
        save_atomic(out_dir / "reconstructions.npy", lambda path: np.save(path, original_units))
        return
    from PIL import Image

    for index, name in enumerate(inputs.names):
        stem = f"{index:03d}-{_safe(name)}"
        for suffix, images in (("reconstruction", reconstructions), ("noisy", noisy)):
            if images is None:
                continue
            pixels = np.round(np.clip(images[index], 0, 1) * 255).astype(np.uint8)
            picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            save_atomic(out_dir / f"{stem}-{suffix}.png", functools.partial(picture.save, format="PNG"))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).stem)[:60]


def _write_table(path: Path, inputs: _Inputs, after: np.ndarray, before: np.ndarray | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["index", "input", "source_row", "label", "mse"]
    if before is not None:
        header += ["psnr_noisy", "psnr_reconstructed"]
    writer.writerow(header)
    for index, name in enumerate(inputs.names):
        row: list[Any] = [index, name, inputs.source_rows[index], inputs.labels[index], f"{after[index]:.8g}"]
        if before is not None:
            row += [f"{_psnr(before[index]):.4f}", f"{_psnr(after[index]):.4f}"]
        writer.writerow(row)
    write_text_atomic(path, buffer.getvalue())


def _psnr(mse: float) -> float:
    return PSNR_CAP_DB if mse <= 0 else min(PSNR_CAP_DB, float(10 * np.log10(1.0 / mse)))


def _mean_psnr(mse: np.ndarray) -> float:
    return float(np.mean([_psnr(float(value)) for value in mse]))


def _plot_grid(
    path: Path,
    inputs: _Inputs,
    noisy: np.ndarray | None,
    reconstructions: np.ndarray,
    is_image: bool,
    noise: NoiseSpec | None,
) -> None:
    shown = slice(0, GRID_COLUMNS)
    clean = inputs.x
    rows = [("input", clean[shown]), ("reconstructed", reconstructions[shown])]
    if noisy is not None:
        rows = [(f"noisy\n({noise})", noisy[shown]), ("reconstructed", reconstructions[shown]), ("clean", clean[shown])]
    titles = [clip(name, 14) for name in inputs.names[shown]]
    if is_image:
        plot_image_rows(rows, path, column_titles=titles)
    else:
        few = slice(0, min(6, len(clean)))
        plot_feature_rows([(name, values[few]) for name, values in rows], path, titles[few])
