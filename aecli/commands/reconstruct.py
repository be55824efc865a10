"""`aecli reconstruct`: run given inputs through a trained autoencoder (optionally corrupted first).

Inputs are image files (resized and converted to the model's channels), data files (IDX,
.npz, .npy, .csv) or indices of the run's test split. Everything is loaded and checked
before the output folder is created.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.backend import select_backend
from aecli.config import DataConfig
from aecli.data import load_dataset, load_for_model
from aecli.errors import DataError, EvaluationError
from aecli.evaluation import PSNR_CAP_DB, is_unit_range, per_sample_errors, predict_batched
from aecli.noise import NoiseSpec, corrupt, parse_noise
from aecli.reporting import plot_feature_rows, plot_image_rows
from aecli.runs import (
    TrainedRun,
    check_new_output_dir,
    create_run_dir,
    load_model,
    open_trained_run,
    save_atomic,
    write_text_atomic,
)

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


@dataclass
class ReconstructOutcome:
    out_dir: Path
    n_inputs: int
    mean_mse: float
    psnr_noisy: float | None = None
    psnr_reconstructed: float | None = None


@dataclass
class _Inputs:
    x: np.ndarray
    names: list[str]
    labels: list[str]


def reconstruct(request: ReconstructRequest) -> ReconstructOutcome:
    run = open_trained_run(request.run_dir)
    select_backend(request.backend or run.config.runtime.backend)
    noise = parse_noise(request.noise) if request.noise else None
    if not request.inputs and request.indices is None:
        raise EvaluationError("give at least one INPUT file or --indices of the run's test split")
    check_new_output_dir(request.out)
    inputs = _load_inputs(run, request)
    clean = inputs.x
    if noise and not is_unit_range(clean):
        raise EvaluationError(f"--noise {noise}: needs inputs scaled to [0, 1], and this run's data is not")
    fed = corrupt(clean, noise, np.random.default_rng(request.seed)) if noise else clean

    model = load_model(run.path / "model.keras", compile=False)
    reconstructions = predict_batched(model, fed)
    codes = predict_batched(load_model(run.path / "encoder.keras", compile=False), fed) if request.save_latent else None
    after = per_sample_errors(clean, reconstructions)["mse"]
    before = per_sample_errors(clean, fed)["mse"] if noise else None

    out_dir = request.out if request.out is not None else create_run_dir(run.path, "reconstruct")
    out_dir.mkdir(parents=True, exist_ok=True)
    is_image = len(run.sample_shape) == 3
    _write_outputs(out_dir, run, inputs, fed if noise else None, reconstructions, is_image)
    _write_table(out_dir / "reconstructions.csv", inputs, after, before)
    _plot_grid(out_dir / "reconstructions.png", clean, fed if noise else None, reconstructions, is_image, noise)
    if codes is not None:
        save_atomic(out_dir / "latent.npy", lambda path: np.save(path, codes))
    return ReconstructOutcome(
        out_dir,
        len(clean),
        float(np.mean(after)),
        None if before is None else _mean_psnr(before),
        None if before is None else _mean_psnr(after),
    )


def _load_inputs(run: TrainedRun, request: ReconstructRequest) -> _Inputs:
    parts: list[_Inputs] = []
    for path in request.inputs:
        if not path.exists():
            raise EvaluationError(f"input not found: {path}")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            parts.append(_Inputs(_read_image(path, run.sample_shape)[None], [path.name], [""]))
        else:
            try:
                x, y, names = load_for_model(DataConfig(source=str(path)), run.sample_shape, run.scaling)
            except DataError as exc:
                raise DataError(str(exc).replace("data.source", "input", 1)) from None
            labels = [""] * len(x) if y is None else [names[i] if names else str(i) for i in y.tolist()]
            parts.append(_Inputs(x, [f"{path.name}[{i}]" for i in range(len(x))], labels))
    if request.indices is not None:
        dataset = load_dataset(run.config.data, seed=run.config.training.seed, test_only=True)
        bad = [i for i in request.indices if not 0 <= i < len(dataset.x_test)]
        if bad:
            raise EvaluationError(f"--indices {bad}: the run's test split has indices 0..{len(dataset.x_test) - 1}")
        labels = (
            [""] * len(request.indices) if dataset.y_test is None else [str(dataset.y_test[i]) for i in request.indices]
        )
        parts.append(_Inputs(dataset.x_test[request.indices], [f"test[{i}]" for i in request.indices], labels))
    return _Inputs(
        np.concatenate([part.x for part in parts]),
        [name for part in parts for name in part.names],
        [label for part in parts for label in part.labels],
    )


def _read_image(path: Path, sample_shape: tuple[int, ...]) -> np.ndarray:
    """An image file as the model's input: resized to its height x width, 1 or 3 channels, in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if len(sample_shape) != 3:
        raise EvaluationError(
            f"{path.name}: this run's model takes {sample_shape[0]} tabular features, not images; "
            f"give a data file (.npy, .csv, ...) instead"
        )
    height, width, channels = sample_shape
    if channels not in (1, 3):
        raise EvaluationError(f"{path.name}: the model expects {channels}-channel images, which image files lack")
    try:
        with Image.open(path) as image:
            converted = image.convert("L" if channels == 1 else "RGB")
            if converted.size != (width, height):
                converted = converted.resize((width, height), Image.Resampling.LANCZOS)
            array = np.asarray(converted, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read it as an image ({exc})") from None
    return array.reshape(sample_shape)


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
    header = ["index", "input", "label", "mse"]
    if before is not None:
        header += ["psnr_noisy", "psnr_reconstructed"]
    writer.writerow(header)
    for index, name in enumerate(inputs.names):
        row: list[Any] = [index, name, inputs.labels[index], f"{after[index]:.8g}"]
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
    clean: np.ndarray,
    noisy: np.ndarray | None,
    reconstructions: np.ndarray,
    is_image: bool,
    noise: NoiseSpec | None,
) -> None:
    shown = slice(0, GRID_COLUMNS)
    rows = [("input", clean[shown]), ("reconstructed", reconstructions[shown])]
    if noisy is not None:
        rows = [(f"noisy\n({noise})", noisy[shown]), ("reconstructed", reconstructions[shown]), ("clean", clean[shown])]
    if is_image:
        plot_image_rows(rows, path, column_titles=[str(i) for i in range(len(clean[shown]))])
    else:
        plot_feature_rows(rows, clean[: min(4, len(clean))], path)
