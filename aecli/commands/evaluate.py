"""`aecli evaluate`: reconstruction, latent-space and anomaly metrics of a trained run, with plots.

Everything is computed before the output folder is created, so a request that fails
writes nothing; the run's training artifacts are only ever read.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.backend import select_backend
from aecli.data import Samples, label_codes, label_name, load_for_model, present_labels
from aecli.errors import DataError, EvaluationError
from aecli.evaluation import (
    ThresholdSpec,
    anomaly_report,
    latent_report,
    mean_ssim,
    parse_threshold,
    per_sample_errors,
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
from aecli.runs import AUGMENTED_SAMPLES, StagedOutputDir, check_new_output_dir, now_iso
from aecli.trained_run import TrainedRun, load_model, open_trained_run

SCORES = ("mse", "mae", "bce")


@dataclass
class EvaluateRequest:
    run_dir: Path
    data: str | None = None
    data_overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    normal_classes: list[int | str] | None = None
    anomaly_data: str | None = None
    score: str = "mse"
    threshold: str | None = None
    tsne: bool = False
    backend: str | None = None
    force: bool = False


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
    origin: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample columns: source_row, id
    is_anomaly: np.ndarray | None = None
    normal_classes: list[int | str] | None = None
    added_anomalies: bool = False  # --anomaly-data rows appended after the evaluated ones


ANOMALY_LABEL = "anomaly (--anomaly-data)"


def evaluate_run(request: EvaluateRequest) -> EvaluateOutcome:
    """Everything is read and computed first; the outputs are written into a hidden folder that
    becomes the output folder only when complete."""
    run = open_trained_run(request.run_dir, needs=("history.csv",))
    select_backend(request.backend or run.config.runtime.backend)
    if request.score not in SCORES:
        raise EvaluationError(f"--score {request.score!r}: expected one of {', '.join(SCORES)}")
    threshold_spec = parse_threshold(request.threshold or run.metrics["train_errors"]["default_threshold"])
    if request.normal_classes is not None and request.anomaly_data is not None:
        raise EvaluationError("--normal-classes and --anomaly-data are two ways to label anomalies: use one")
    if request.data is not None and request.anomaly_data is not None and _same_file(request.data, request.anomaly_data):
        raise EvaluationError(
            "--anomaly-data: the same source as --data; its samples cannot be both normal and anomalies"
        )
    check_new_output_dir(request.out)
    history = read_history_csv(run.path / "history.csv")
    evaluated = _evaluated_data(run, request)

    model = load_model(run.path / "model.keras", compile=False)
    encoder = load_model(run.path / "encoder.keras", compile=False)
    reconstructions = predict_batched(model, evaluated.x)
    errors = per_sample_errors(evaluated.x, reconstructions)
    if request.score not in errors:
        raise EvaluationError("--score bce: needs data in [0, 1], and the evaluated data is outside it")
    # Samples added by --anomaly-data are not the evaluated data: its metrics leave them out.
    normal = np.ones(len(evaluated.x), bool)
    if evaluated.added_anomalies and evaluated.is_anomaly is not None:
        normal = ~evaluated.is_anomaly
    metrics = _reconstruction_metrics(run, evaluated, reconstructions, normal)
    codes = predict_batched(encoder, evaluated.x)
    if evaluated.labels is not None:
        latent = latent_report(codes[normal], evaluated.labels[normal], seed=run.config.training.seed)
        if latent is not None:
            metrics["latent"] = latent

    scores = errors[request.score]
    anomaly, threshold, flags = _anomaly_metrics(run, request, evaluated, scores, threshold_spec)
    if anomaly is not None:
        metrics["anomaly"] = anomaly
    metrics = {"run": str(run.path), "data": evaluated.description, "evaluated": now_iso(), **metrics}
    points, method = project_2d(codes, "tsne" if request.tsne else "pca", seed=run.config.training.seed)

    staged = StagedOutputDir(request.out, run.path, "eval")
    with staged as out_dir:
        write_metrics_json(out_dir / "metrics.json", metrics)
        write_errors_csv(
            out_dir / "errors.csv", errors, evaluated.labels, evaluated.label_names, flags, evaluated.origin
        )
        plot_loss_curves(history, out_dir / "loss_curves.png")
        augmented = run.path / AUGMENTED_SAMPLES
        if augmented.is_file():
            shutil.copyfile(augmented, out_dir / AUGMENTED_SAMPLES)
        plot_reconstruction_grid(
            evaluated.x, reconstructions, errors["mse"], len(run.sample_shape) == 3, out_dir / "reconstructions.png"
        )
        plot_error_histogram(scores, request.score, out_dir / "error_histogram.png", evaluated.is_anomaly, threshold)
        plot_latent(points, evaluated.labels, method, out_dir / "latent.png", evaluated.label_names)
        write_report(out_dir, f"aecli evaluation of {run.path.name}", _report_blocks(run, metrics))
    final = staged.final or out_dir
    return EvaluateOutcome(final, metrics, final / "report.html")


def _same_file(first: str, second: str) -> bool:
    try:
        return first == second or os.path.samefile(first, second)
    except (OSError, ValueError):  # a built-in name, or a missing path (reported when it is read)
        return False


def _anomaly_metrics(
    run: TrainedRun, request: EvaluateRequest, evaluated: _Evaluated, scores: np.ndarray, threshold_spec: ThresholdSpec
) -> tuple[dict[str, Any] | None, float | None, dict[str, np.ndarray]]:
    """When the evaluated samples are labelled normal or anomalous: the anomaly report, the
    threshold, and the per-sample columns (is_anomaly, flagged) for errors.csv."""
    if evaluated.is_anomaly is None:
        return None, None, {}
    train_scores = _training_scores(run, request.score)
    threshold = resolve_threshold(threshold_spec, train_scores, scores)
    report = {
        "score": request.score,
        "threshold_spec": str(threshold_spec),
        **({"normal_classes": evaluated.normal_classes} if evaluated.normal_classes is not None else {}),
        **anomaly_report(scores, evaluated.is_anomaly, threshold),
    }
    return report, threshold, {"is_anomaly": evaluated.is_anomaly, "flagged": scores > threshold}


def _reconstruction_metrics(
    run: TrainedRun, evaluated: _Evaluated, reconstructions: np.ndarray, normal: np.ndarray
) -> dict[str, Any]:
    """Reconstruction metrics of the evaluated data; rows added by --anomaly-data get their own."""
    is_image = len(run.sample_shape) == 3
    x, x_hat = evaluated.x[normal], reconstructions[normal]
    labels = None if evaluated.labels is None else evaluated.labels[normal]
    metrics, _ = reconstruction_report(x, x_hat, labels, evaluated.label_names)
    if is_image:
        metrics["reconstruction"]["ssim"] = mean_ssim(x, x_hat)
    if not normal.all():
        added, _ = reconstruction_report(evaluated.x[~normal], reconstructions[~normal], None)
        metrics["anomaly_data_reconstruction"] = {"n_samples": added["n_samples"], **added["reconstruction"]}
    return metrics


def _evaluated_data(run: TrainedRun, request: EvaluateRequest) -> _Evaluated:
    if request.data is None and request.anomaly_data is None and request.data_overrides:
        raise EvaluationError(
            "--set data.KEY=VALUE says how to read --data or --anomaly-data (the run's own test split is fixed)"
        )
    if request.data is None:
        dataset = run.test_split(request.force)
        evaluated = _Evaluated(
            dataset.x_test,
            dataset.y_test,
            dataset.label_names,
            f"test split of {run.config.data.source}",
            dataset.origin("test"),
        )
    else:
        samples = _load_option(run, request.data, request.data_overrides, "--data")
        evaluated = _Evaluated(
            samples.x, samples.y, samples.label_names, _rows_read(request.data, samples), samples.origin()
        )

    normal_classes = request.normal_classes
    inherited = normal_classes is None and request.anomaly_data is None and run.config.data.classes is not None
    if inherited:
        normal_classes = run.config.data.classes  # trained on these: every other label is an anomaly
    if request.anomaly_data is not None:
        anomalies = _load_option(run, request.anomaly_data, request.data_overrides, "--anomaly-data")
        _add_anomalies(evaluated, anomalies)
        evaluated.description += f", with {_rows_read(request.anomaly_data, anomalies)} as anomalies"
    elif normal_classes is not None:
        if evaluated.labels is None:
            raise EvaluationError(f"--normal-classes: {evaluated.description} has no labels to tell anomalies by")
        codes = label_codes(normal_classes, evaluated.label_names, "--normal-classes")
        evaluated.is_anomaly = ~np.isin(evaluated.labels, codes)
        if evaluated.is_anomaly.all() and not inherited:  # a typo, most likely: say what there is
            present = present_labels(evaluated.labels, evaluated.label_names)
            raise EvaluationError(f"--normal-classes {normal_classes}: none occur in the labels (present: {present})")
        evaluated.normal_classes = list(normal_classes)
    return evaluated


def _rows_read(source: str, samples: Samples) -> str:
    return f"the first rows of {source} (data.limit)" if samples.limited else f"all rows of {source}"


def _add_anomalies(evaluated: _Evaluated, anomalies: Samples) -> None:
    """Append every row of an --anomaly-data source, labelled as such (its own label name)."""
    n = len(anomalies.x)
    evaluated.x = np.concatenate([evaluated.x, anomalies.x])
    evaluated.is_anomaly = np.r_[np.zeros(len(evaluated.x) - n, bool), np.ones(n, bool)]
    evaluated.added_anomalies = True
    if evaluated.labels is not None:
        values, codes = np.unique(evaluated.labels, return_inverse=True)
        names = [label_name(value, evaluated.label_names) for value in values]
        evaluated.labels = np.r_[codes, np.full(n, len(names))].astype(np.int64)
        evaluated.label_names = [*names, ANOMALY_LABEL]
    added = anomalies.origin()
    for column in list(evaluated.origin):
        values = added.get(column, np.full(n, "", object))
        evaluated.origin[column] = np.r_[evaluated.origin[column].astype(object), values.astype(object)]
    evaluated.origin["source"] = np.r_[
        np.full(len(evaluated.x) - n, "evaluated", object), np.full(n, "anomaly-data", object)
    ]


def _load_option(run: TrainedRun, source: str, overrides: list[str], option: str) -> Samples:
    """Read a source named on the command line the way the run reads its data; errors name the option."""
    cfg = run.data_config_for(source, overrides, option)
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
                "augmentation": config.data.augment.describe(),
                "epochs run (best)": f"{training.get('epochs_run')} ({training.get('best_epoch')})",
                "parameters": f"{training.get('parameters', 0):,}",
            },
        ),
        ("image", ("loss_curves.png", "Training and validation loss per epoch")),
    ]
    if config.data.augment.active and (run.path / AUGMENTED_SAMPLES).is_file():
        caption = "Training images (top row) and augmented versions of them: what the model trained on"
        blocks.append(("image", (AUGMENTED_SAMPLES, caption)))
    blocks += [
        ("heading", "Reconstruction"),
        ("table", {**metrics["reconstruction"], **{f"error {k}": v for k, v in metrics["error_quantiles"].items()}}),
        ("image", ("reconstructions.png", "Best, typical and worst reconstructions by error")),
    ]
    if "per_class" in metrics:
        rows = [["label", "mse", "n"]] + [[label, v["mse"], v["n"]] for label, v in metrics["per_class"].items()]
        blocks += [("heading", "Per class"), ("table", rows)]
    if "anomaly" in metrics:
        blocks += [("heading", "Anomaly detection (positive class: anomaly)"), ("table", metrics["anomaly"])]
    if "anomaly_data_reconstruction" in metrics:
        blocks += [
            ("text", "Reconstruction of the --anomaly-data rows (left out of the metrics above):"),
            ("table", metrics["anomaly_data_reconstruction"]),
        ]
    blocks.append(("image", ("error_histogram.png", "Distribution of reconstruction errors")))
    if "latent" in metrics:
        latent = {k: v for k, v in metrics["latent"].items() if k != "knn"}
        blocks += [("heading", "Latent space"), ("table", latent)]
    blocks.append(("image", ("latent.png", "Latent codes in two dimensions")))
    return blocks
