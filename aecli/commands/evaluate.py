"""`aecli evaluate`: reconstruction, latent-space and anomaly metrics of a trained run, with plots.

Everything is computed before the output folder is created, so a request that fails
writes nothing; the run's training artifacts are only ever read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.backend import select_backend
from aecli.config import DataConfig, apply_override
from aecli.data import load_dataset, load_for_model
from aecli.errors import ConfigError, DataError, EvaluationError
from aecli.evaluation import (
    anomaly_report,
    latent_report,
    mean_ssim,
    parse_threshold,
    predict_batched,
    project_2d,
    reconstruction_report,
    resolve_threshold,
)
from aecli.reporting import (
    plot_error_histogram,
    plot_latent,
    plot_loss_curves,
    plot_reconstruction_grid,
    read_error_column,
    read_history_csv,
    write_errors_csv,
    write_metrics_json,
    write_report,
)
from aecli.runs import TrainedRun, check_new_output_dir, create_run_dir, load_model, now_iso, open_trained_run

SCORES = ("mse", "mae", "bce")


@dataclass
class EvaluateRequest:
    run_dir: Path
    data: str | None = None
    data_overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    normal_classes: list[int] | None = None
    anomaly_data: str | None = None
    score: str = "mse"
    threshold: str | None = None
    tsne: bool = False
    backend: str | None = None


@dataclass
class EvaluateOutcome:
    out_dir: Path
    metrics: dict[str, Any]
    report_html: Path


@dataclass
class _Evaluated:
    x: np.ndarray
    labels: np.ndarray | None
    label_names: list[str] | None
    description: str
    is_anomaly: np.ndarray | None = None
    normal_classes: list[int] | None = None


def evaluate_run(request: EvaluateRequest) -> EvaluateOutcome:
    run = open_trained_run(request.run_dir)
    select_backend(request.backend or run.config.runtime.backend)
    if request.score not in SCORES:
        raise EvaluationError(f"--score {request.score!r}: expected one of {', '.join(SCORES)}")
    threshold_spec = parse_threshold(request.threshold or run.metrics["train_errors"]["default_threshold"])
    if request.normal_classes is not None and request.anomaly_data is not None:
        raise EvaluationError("--normal-classes and --anomaly-data are two ways to label anomalies: use one")
    out_dir = check_new_output_dir(request.out)
    evaluated = _evaluated_data(run, request)

    model = load_model(run.path / "model.keras", compile=False)
    encoder = load_model(run.path / "encoder.keras", compile=False)
    reconstructions = predict_batched(model, evaluated.x)
    metrics, errors = reconstruction_report(evaluated.x, reconstructions, evaluated.labels, evaluated.label_names)
    if request.score not in errors:
        raise EvaluationError("--score bce: needs data in [0, 1], and the evaluated data is outside it")
    is_image = len(run.sample_shape) == 3
    if is_image:
        metrics["reconstruction"]["ssim"] = mean_ssim(evaluated.x, reconstructions)

    # Samples added by --anomaly-data carry no real label: score the latent space without them.
    normal = np.ones(len(evaluated.x), bool)
    if request.anomaly_data is not None and evaluated.is_anomaly is not None:
        normal = ~evaluated.is_anomaly
    codes = predict_batched(encoder, evaluated.x)
    if evaluated.labels is not None:
        latent = latent_report(codes[normal], evaluated.labels[normal], seed=run.config.training.seed)
        if latent is not None:
            metrics["latent"] = latent

    scores = errors[request.score]
    threshold = None
    flags: dict[str, np.ndarray] = {}
    if evaluated.is_anomaly is not None:
        train_scores = _training_scores(run, request.score)
        threshold = resolve_threshold(threshold_spec, train_scores, scores)
        metrics["anomaly"] = {
            "score": request.score,
            "threshold_spec": str(threshold_spec),
            **({"normal_classes": evaluated.normal_classes} if evaluated.normal_classes is not None else {}),
            **anomaly_report(scores, evaluated.is_anomaly, threshold),
        }
        flags = {"is_anomaly": evaluated.is_anomaly, "flagged": scores > threshold}
    metrics = {"run": str(run.path), "data": evaluated.description, "evaluated": now_iso(), **metrics}

    out_dir = _create_out_dir(out_dir) if out_dir else create_run_dir(run.path, "eval")
    write_metrics_json(out_dir / "metrics.json", metrics)
    write_errors_csv(out_dir / "errors.csv", errors, evaluated.labels, evaluated.label_names, flags)
    history = read_history_csv(run.path / "history.csv")
    plot_loss_curves(history, out_dir / "loss_curves.png")
    plot_reconstruction_grid(evaluated.x, reconstructions, errors["mse"], is_image, out_dir / "reconstructions.png")
    plot_error_histogram(scores, request.score, out_dir / "error_histogram.png", evaluated.is_anomaly, threshold)
    points, method = project_2d(codes, "tsne" if request.tsne else "pca", seed=run.config.training.seed)
    plot_latent(points, evaluated.labels, method, out_dir / "latent.png", evaluated.label_names)
    _, report_html = write_report(out_dir, f"aecli evaluation of {run.path.name}", _report_blocks(run, metrics))
    return EvaluateOutcome(out_dir, metrics, report_html)


def _create_out_dir(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return out


def _data_config(run: TrainedRun, source: str, overrides: list[str]) -> DataConfig:
    raw: dict[str, Any] = {"data": {**run.config.data.model_dump(exclude_none=True), "source": source}}
    for override in overrides:
        if not override.startswith("data."):
            raise ConfigError(f"--set {override!r}: evaluate accepts data.KEY=VALUE overrides only")
        apply_override(raw, override)
    try:
        return DataConfig.model_validate(raw["data"])
    except Exception as exc:
        raise ConfigError(f"--set: {' '.join(str(exc).split())}") from None


def _evaluated_data(run: TrainedRun, request: EvaluateRequest) -> _Evaluated:
    if request.data is None and request.data_overrides:
        raise EvaluationError("--set data.KEY=VALUE needs --data SOURCE (the run's own test split is fixed)")
    if request.data is None:
        dataset = load_dataset(run.config.data, seed=run.config.training.seed, test_only=True)
        evaluated = _Evaluated(
            dataset.x_test, dataset.y_test, dataset.label_names, f"test split of {run.config.data.source}"
        )
    else:
        cfg = _data_config(run, request.data, request.data_overrides)
        x, y, names = _load_option(cfg, run, "--data")
        evaluated = _Evaluated(x, y, names, f"all rows of {request.data}")

    normal_classes = request.normal_classes
    if normal_classes is None and request.anomaly_data is None and run.config.data.classes is not None:
        normal_classes = run.config.data.classes  # trained on these: every other label is an anomaly
    if request.anomaly_data is not None:
        cfg = _data_config(run, request.anomaly_data, request.data_overrides)
        x_anomaly, _, _ = _load_option(cfg, run, "--anomaly-data")
        evaluated.x = np.concatenate([evaluated.x, x_anomaly])
        evaluated.is_anomaly = np.r_[np.zeros(len(evaluated.x) - len(x_anomaly), bool), np.ones(len(x_anomaly), bool)]
        if evaluated.labels is not None:
            evaluated.labels = np.r_[evaluated.labels, np.full(len(x_anomaly), -1)]
            evaluated.label_names = None
        evaluated.description += f", with every row of {request.anomaly_data} as anomalies"
    elif normal_classes is not None:
        if evaluated.labels is None:
            raise EvaluationError(f"--normal-classes: {evaluated.description} has no labels to tell anomalies by")
        if not np.isin(evaluated.labels, normal_classes).any():
            present = ", ".join(str(label) for label in np.unique(evaluated.labels)[:20])
            raise EvaluationError(f"--normal-classes {normal_classes}: none occur in the labels (present: {present})")
        evaluated.is_anomaly = ~np.isin(evaluated.labels, normal_classes)
        evaluated.normal_classes = list(normal_classes)
    return evaluated


def _load_option(cfg: DataConfig, run: TrainedRun, option: str) -> tuple[np.ndarray, Any, Any]:
    """Load a source named on the command line; its errors name the option, not data.source."""
    try:
        return load_for_model(cfg, run.sample_shape, run.scaling)
    except DataError as exc:
        raise DataError(str(exc).replace("data.source", option, 1)) from None


def _training_scores(run: TrainedRun, score: str) -> np.ndarray:
    path = run.path / "train_errors.csv"
    if not path.is_file():
        raise EvaluationError(f"run {run.path} has no train_errors.csv to set a threshold from; use a number")
    try:
        return read_error_column(path, score)
    except KeyError:
        raise EvaluationError(f"--score {score}: the run's training errors have no {score} column") from None


def _report_blocks(run: TrainedRun, metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    config = run.config
    training = run.metrics.get("training", {})
    blocks: list[tuple[str, Any]] = [
        ("text", f"Run {run.path} evaluated on the {metrics['data']} ({metrics['n_samples']} samples)."),
        ("heading", "Experiment"),
        (
            "table",
            {
                "data": config.data.source,
                "model": f"{config.model.kind}: encoder {config.model.encoder}, latent {config.model.latent_dim}, "
                f"decoder {config.model.decoder}",
                "optimizer": f"{config.optimizer.name} (learning rate {config.optimizer.learning_rate:g})",
                "loss": config.loss.name,
                "epochs run (best)": f"{training.get('epochs_run')} ({training.get('best_epoch')})",
                "parameters": f"{training.get('parameters', 0):,}",
            },
        ),
        ("image", ("loss_curves.png", "Training and validation loss per epoch")),
        ("heading", "Reconstruction"),
        ("table", {**metrics["reconstruction"], **{f"error {k}": v for k, v in metrics["error_quantiles"].items()}}),
        ("image", ("reconstructions.png", "Best, typical and worst reconstructions by error")),
    ]
    if "per_class" in metrics:
        rows = [["label", "mse", "n"]] + [[label, v["mse"], v["n"]] for label, v in metrics["per_class"].items()]
        blocks += [("heading", "Per class"), ("table", rows)]
    if "anomaly" in metrics:
        blocks += [("heading", "Anomaly detection (positive class: anomaly)"), ("table", metrics["anomaly"])]
    blocks.append(("image", ("error_histogram.png", "Distribution of reconstruction errors")))
    if "latent" in metrics:
        latent = {k: v for k, v in metrics["latent"].items() if k != "knn"}
        blocks += [("heading", "Latent space"), ("table", latent)]
    blocks.append(("image", ("latent.png", "Latent codes in two dimensions")))
    return blocks
