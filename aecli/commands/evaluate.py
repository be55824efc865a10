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
from aecli.baselines import baseline_report
from aecli.calibration import (
    VALIDATION_ERRORS,
    active_threshold,
    chosen_score,
    missing_score,
    stored_errors,
    training_errors,
)
from aecli.code_scores import CodeSpace, code_space_of
from aecli.config import ModelConfig
from aecli.data import Samples, label_codes, label_name, present_labels
from aecli.data.arrays import Timeline
from aecli.errors import AecliError, EvaluationError
from aecli.evaluation import (
    anomaly_report,
    latent_report,
    mean_ssim,
    per_sample_errors,
    predict_fixed,
    project_2d,
    reconstruction_report,
)
from aecli.nab_scoring import PROFILES, NabFile, nab_score
from aecli.reporting import (
    plot_anomalies_in_time,
    plot_class_extremes,
    plot_error_histogram,
    plot_latent,
    plot_loss_curves,
    plot_reconstruction_grid,
    plot_residuals,
    read_history_csv,
    write_errors_csv,
    write_metrics_json,
    write_report,
    write_rows_csv,
    write_step_scores_csv,
)
from aecli.runs import AUGMENTED_SAMPLES, StagedOutputDir, check_new_output_dir, now_iso
from aecli.thresholds import SIGNED_SCORES, ThresholdSpec, parse_threshold, resolve_threshold
from aecli.time_anomalies import (
    POINTS,
    TimeAnomalies,
    detection_report,
    flag_steps,
    labels_from_windows,
    ranges_of,
    step_scores,
    stream_likelihood,
)
from aecli.trained_run import TrainedRun, load_model, open_trained_run

RESIDUALS = "residuals.png"
CLASS_EXTREMES = "class_extremes.png"


@dataclass
class EvaluateRequest:
    run_dir: Path
    data: str | None = None
    data_overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    normal_classes: list[int | str] | None = None
    anomaly_data: str | None = None
    score: str | None = None  # default: the run's anomaly.score
    threshold: str | None = None
    anomaly_windows: Path | None = None  # NAB-style labelled windows of a series
    points: str | None = None  # default: the run's anomaly.points
    tsne: bool = False
    backend: str | None = None
    force: bool = False
    pairs: Path | None = None  # text runs: sentence pairs with gold similarity scores
    pair_columns: tuple[str, str, str] = ("sentence1", "sentence2", "score")
    baselines: bool = True  # IsolationForest and PCA beside the autoencoder, when the rows are labelled


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
    timeline: Timeline | None = None  # windows of a series: where they lie in time
    x_train: np.ndarray | None = None  # the run's training rows, when they were read anyway (for the baselines)


ANOMALY_LABEL = "anomaly (--anomaly-data)"


def evaluate_run(request: EvaluateRequest) -> EvaluateOutcome:
    """Everything is read and computed first; the outputs are written into a hidden folder that
    becomes the output folder only when complete."""
    run = open_trained_run(request.run_dir, needs=("history.csv",))
    select_backend(request.backend or run.config.runtime.backend)
    if run.config.data.text is not None:
        return _evaluate_texts(run, request)
    score, threshold_choice = _checked_options(run, request)
    code_space = code_space_of(run.path, score)
    history = read_history_csv(run.path / "history.csv")
    evaluated = _evaluated_data(run, request)
    model = load_model(run.path / "model.keras", compile=False)
    encoder = load_model(run.path / "encoder.keras", compile=False)
    reconstructions = predict_fixed(model, evaluated.x)  # (the call shape of score and serve: the same bits)
    codes = predict_fixed(encoder, evaluated.x).reshape(len(evaluated.x), -1)  # (a feature map, flattened)
    errors = _per_sample_scores(evaluated.x, reconstructions, codes, code_space, score)
    # Samples added by --anomaly-data are not the evaluated data: its metrics leave them out.
    normal = np.ones(len(evaluated.x), bool)
    if evaluated.added_anomalies and evaluated.is_anomaly is not None:
        normal = ~evaluated.is_anomaly
    metrics = _reconstruction_metrics(run, evaluated, reconstructions, normal)
    if evaluated.labels is not None:
        latent = latent_report(codes[normal], evaluated.labels[normal], seed=run.config.training.seed)
        if latent is not None:
            metrics["latent"] = latent
    scores = errors[score]
    anomaly, threshold, flags = _anomaly_metrics(run, score, evaluated, scores, threshold_choice)
    if anomaly is not None:
        if request.baselines and evaluated.timeline is None:
            anomaly["baselines"] = _baselines(run, request, evaluated, codes.shape[1])
        metrics["anomaly"] = anomaly
    in_time = None
    if evaluated.timeline is not None:
        in_time = _anomalies_in_time(run, request, evaluated.timeline, scores, score, threshold_choice)
        metrics["anomalies_in_time"] = in_time.metrics
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
        _plot_scores(out_dir, run, evaluated, reconstructions, (score, scores, threshold), metrics)
        if in_time is not None and evaluated.timeline is not None:
            _write_time_outputs(out_dir, evaluated.timeline, in_time)
        plot_latent(points, evaluated.labels, method, out_dir / "latent.png", evaluated.label_names)
        write_report(out_dir, f"aecli evaluation of {run.path.name}", _report_blocks(run, metrics))
    final = staged.final or out_dir
    return EvaluateOutcome(final, metrics, final / "report.html")


def _plot_scores(
    out_dir: Path,
    run: TrainedRun,
    evaluated: _Evaluated,
    reconstructions: np.ndarray,
    scored: tuple[str, np.ndarray, float | None],
    metrics: dict[str, Any],
) -> None:
    """The score's histogram, why the highest score high, and for labelled images each class's extremes."""
    score, scores, threshold = scored
    is_image = len(run.sample_shape) == 3
    plot_error_histogram(scores, score, out_dir / "error_histogram.png", evaluated.is_anomaly, threshold)
    plot_residuals(evaluated.x, reconstructions, scores, score, is_image, out_dir / RESIDUALS)
    if _shows_class_extremes(run, metrics) and evaluated.labels is not None:
        x, labels, names = evaluated.x, evaluated.labels, evaluated.label_names
        plot_class_extremes(x, reconstructions, scores, labels, names, score, out_dir / CLASS_EXTREMES)


def _evaluate_texts(run: TrainedRun, request: EvaluateRequest) -> EvaluateOutcome:
    from aecli.commands.evaluate_text import evaluate_text_run

    _check_text_options(request)
    found = evaluate_text_run(run, request)
    return EvaluateOutcome(found.out_dir, found.metrics, found.report_html)


def _check_text_options(request: EvaluateRequest) -> None:
    """What evaluate does for images, tables and series but not for texts."""
    for option, value in (
        ("--anomaly-data", request.anomaly_data),
        ("--anomaly-windows", request.anomaly_windows),
        ("--points", request.points),
        ("--score", request.score),
        ("--threshold", request.threshold),
    ):
        if value is not None:
            raise EvaluationError(
                f"{option}: not available for text runs (anomalies: --normal-classes, scored by xent)"
            )


@dataclass(frozen=True)
class _ThresholdChoice:
    spec: ThresholdSpec
    origin: str  # where it comes from, for the report
    method: str  # how it was chosen, e.g. "fpr:0.01" (for a calibrated one, its value is `spec`'s)

    def resolve(self, run: TrainedRun, score: str, scores: np.ndarray, is_anomaly: np.ndarray | None) -> float:
        normal = (
            stored_errors(run.path, VALIDATION_ERRORS, score, "validation") if self.spec.needs == "normal" else None
        )
        normal_scores = None if normal is None else normal.scores
        train = training_errors(run.path, score).scores
        return resolve_threshold(self.spec, train, scores, normal_scores, is_anomaly, signed=score in SIGNED_SCORES)


def _threshold_choice(run: TrainedRun, request: EvaluateRequest, score: str) -> _ThresholdChoice:
    """--threshold, else the run's calibrated threshold (thresholds.json) when it is on this score,
    else the run's configured one."""
    if request.threshold is not None:
        spec = parse_threshold(request.threshold)
        if spec.needs == "normal" and not (run.path / VALIDATION_ERRORS).is_file():
            raise EvaluationError(
                f"--threshold {spec}: is measured on the run's validation errors ({VALIDATION_ERRORS}), which this run "
                f"lacks; calibrate it with aecli threshold {run.path} --method {spec} --normal-data FILE"
            )
        return _ThresholdChoice(spec, "--threshold", str(spec))
    calibrated = active_threshold(run.path, score)
    if calibrated is not None:
        origin = "the run's calibrated threshold (thresholds.json)"
        method = str(calibrated["method"])
        return _ThresholdChoice(ThresholdSpec("value", float(calibrated["value"])), origin, method)
    spec = parse_threshold(run.metrics["train_errors"]["default_threshold"])
    return _ThresholdChoice(spec, "anomaly.threshold", str(spec))


def _checked_options(run: TrainedRun, request: EvaluateRequest) -> tuple[str, _ThresholdChoice]:
    """The options checked against each other and the run, before anything is read: the score
    and threshold to use (by default what training recorded)."""
    if request.pairs is not None:
        raise EvaluationError("--pairs: sentence-pair similarity applies to runs trained on texts (data.text)")
    score = chosen_score(request.score, run.metrics)
    _check_series_options(run, request)
    threshold = _threshold_choice(run, request, score)
    if request.normal_classes is not None and request.anomaly_data is not None:
        raise EvaluationError("--normal-classes and --anomaly-data are two ways to label anomalies: use one")
    if request.data is not None and request.anomaly_data is not None and _same_file(request.data, request.anomaly_data):
        raise EvaluationError(
            "--anomaly-data: the same source as --data; its samples cannot be both normal and anomalies"
        )
    check_new_output_dir(request.out)
    return score, threshold


def _same_file(first: str, second: str) -> bool:
    try:
        return first == second or os.path.samefile(first, second)
    except (OSError, ValueError):  # a built-in name, or a missing path (reported when it is read)
        return False


def _anomaly_metrics(
    run: TrainedRun, score: str, evaluated: _Evaluated, scores: np.ndarray, choice: _ThresholdChoice
) -> tuple[dict[str, Any] | None, float | None, dict[str, np.ndarray]]:
    """When the evaluated samples are labelled normal or anomalous: the anomaly report, the
    threshold, and the per-sample columns (is_anomaly, flagged) for errors.csv."""
    if evaluated.is_anomaly is None:
        return None, None, {}
    threshold = choice.resolve(run, score, scores, evaluated.is_anomaly)
    report = {
        "score": score,
        "threshold_spec": choice.method,
        "threshold_from": choice.origin,
        **({"normal_classes": evaluated.normal_classes} if evaluated.normal_classes is not None else {}),
        **anomaly_report(scores, evaluated.is_anomaly, threshold),
    }
    return report, threshold, {"is_anomaly": evaluated.is_anomaly, "flagged": scores > threshold}


def _per_sample_scores(
    x: np.ndarray, reconstructions: np.ndarray, codes: np.ndarray, code_space: CodeSpace | None, score: str
) -> dict[str, np.ndarray]:
    """Every per-sample error measure of the evaluated rows, and the code-space scores when the
    run keeps its training codes and the chosen score needs them."""
    errors = per_sample_errors(x, reconstructions, dssim=True)
    if code_space is not None:
        errors.update(code_space.scores(codes, errors["mse"]))
    if score not in errors:
        raise EvaluationError(missing_score(score, "the evaluated data"))
    return errors


def _baselines(run: TrainedRun, request: EvaluateRequest, evaluated: _Evaluated, code_size: int) -> dict[str, Any]:
    """IsolationForest and PCA fitted on the run's training rows, scored on the evaluated rows; a
    note instead when those rows cannot be read again (the training source changed or is gone)."""
    assert evaluated.is_anomaly is not None
    x_train = evaluated.x_train
    if x_train is None:
        try:
            x_train = run.test_split(request.force).x_train
        except AecliError as exc:
            return {"skipped": f"the training rows could not be read again ({exc})"}
    if not len(x_train):  # a streamed source: evaluate reads its test split alone
        return {"skipped": "the training rows are streamed, not read by evaluate"}
    return baseline_report(x_train, evaluated.x, evaluated.is_anomaly, code_size, run.config.training.seed)


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
            timeline=dataset.timelines.get("test"),
            x_train=dataset.x_train,
        )
    else:
        samples = run.read_samples(request.data, request.data_overrides, "--data")
        evaluated = _Evaluated(
            samples.x,
            samples.y,
            samples.label_names,
            _rows_read(request.data, samples),
            samples.origin(),
            timeline=samples.timeline,
        )

    normal_classes = request.normal_classes
    inherited = normal_classes is None and request.anomaly_data is None and run.config.data.classes is not None
    if inherited:
        normal_classes = run.config.data.classes  # trained on these: every other label is an anomaly
    if request.anomaly_data is not None:
        anomalies = run.read_samples(request.anomaly_data, request.data_overrides, "--anomaly-data")
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


def _check_series_options(run: TrainedRun, request: EvaluateRequest) -> None:
    series = run.config.data.series is not None
    if series and (request.anomaly_data is not None or request.normal_classes is not None):
        raise EvaluationError(
            "--anomaly-data and --normal-classes label whole samples; a series run's anomalies are steps in time: "
            "give a label column (data.label_column) or --anomaly-windows FILE"
        )
    if not series and (request.anomaly_windows is not None or request.points is not None):
        option = "--anomaly-windows" if request.anomaly_windows is not None else "--points"
        raise EvaluationError(f"{option}: applies to runs trained on a series (data.series) only")
    if request.points is not None and request.points not in POINTS:
        raise EvaluationError(f"--points {request.points!r}: expected one of {', '.join(POINTS)}")


@dataclass
class _InTime:
    found: TimeAnomalies
    labels: np.ndarray | None  # per step: labelled anomalous
    metrics: dict[str, Any]


def _anomalies_in_time(
    run: TrainedRun,
    request: EvaluateRequest,
    timeline: Timeline,
    window_scores: np.ndarray,
    score: str,
    choice: _ThresholdChoice,
) -> _InTime:
    """Per-step scores of the evaluated stretch, flagged ranges, and with labels the detection table."""
    points = request.points or run.config.anomaly.points or "mean"
    scores = step_scores(window_scores, timeline.starts, timeline.size, len(timeline.times), points)
    likelihood = run.config.anomaly.likelihood
    if likelihood is not None:
        if choice.spec.kind not in ("value", "contamination"):
            raise EvaluationError(
                f"threshold {choice.method}: this run's step scores are likelihoods (anomaly.likelihood), not errors: "
                "give --threshold a number, e.g. 0.5, or contamination:F"
            )
        scores = stream_likelihood(
            scores, likelihood.short, likelihood.history, likelihood.warm_up, likelihood.hold_off
        )
    # contamination: that share of the steps (the other methods use the training windows' errors)
    threshold = choice.resolve(run, score, scores[np.isfinite(scores)], None)
    found = flag_steps(scores, threshold, points)
    labels = timeline.labels
    if request.anomaly_windows is not None:
        labels = labels_from_windows(request.anomaly_windows, request.data or run.config.data.source, timeline)
    metrics: dict[str, Any] = {
        "score": score,
        "points": points,
        "threshold_spec": choice.method,
        "threshold_from": choice.origin,
        "threshold": threshold,
        "steps": len(timeline.times),
        "windows": len(timeline.starts),
        "flagged_steps": int(found.flags.sum()),
        "ranges": found.range_rows(timeline),
    }
    if labels is not None:
        metrics["detection"] = detection_report(found, labels, timeline)
        metrics["nab"] = _nab_scores(scores, labels, threshold)
    return _InTime(found, labels, metrics)


def _nab_scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """NAB's three profile scores of this series' step scores, at the run's threshold (a step is
    flagged over it) and at the best threshold for this one file (NAB picks one for a whole set)."""
    scored = [NabFile(scores, ranges_of(labels))]
    at_threshold = np.nextafter(threshold, np.inf)  # NAB flags scores >= its threshold; aecli those > it
    return {
        profile: {
            "at_threshold": round(float(nab_score(scored, profile, at_threshold).normalised), 2),
            "best": round(float(nab_score(scored, profile).normalised), 2),
        }
        for profile in PROFILES
    }


def _write_time_outputs(out_dir: Path, timeline: Timeline, in_time: _InTime) -> None:
    """points.csv (per step), anomalies.csv (per flagged range) and the series plot."""
    write_step_scores_csv(out_dir / "points.csv", timeline, in_time.found.scores, in_time.found.flags, in_time.labels)
    write_rows_csv(
        out_dir / "anomalies.csv", ["start", "end", "steps", "peak_time", "peak_score"], in_time.metrics["ranges"]
    )
    plot_anomalies_in_time(timeline, in_time.found, in_time.labels, out_dir / "anomalies.png")


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
                "model": _describe_model(config.model),
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
        anomaly = {key: value for key, value in metrics["anomaly"].items() if key != "baselines"}
        blocks += [("heading", "Anomaly detection (positive class: anomaly)"), ("table", anomaly)]
        baselines = metrics["anomaly"].get("baselines", {})
        rows = [["method", "auroc", "auprc"], ["autoencoder", anomaly["auroc"], anomaly["auprc"]]]
        rows += [[name, row["auroc"], row["auprc"]] for name, row in baselines.items() if isinstance(row, dict)]
        if len(rows) > 2:
            blocks += [("text", "Baselines fitted on the same training rows (evaluate --no-baselines skips them):")]
            blocks += [("table", rows)]
    if "anomalies_in_time" in metrics:
        blocks += _time_blocks(metrics["anomalies_in_time"])
    if "anomaly_data_reconstruction" in metrics:
        blocks += [
            ("text", "Reconstruction of the --anomaly-data rows (left out of the metrics above):"),
            ("table", metrics["anomaly_data_reconstruction"]),
        ]
    blocks.append(("image", ("error_histogram.png", "Distribution of reconstruction errors")))
    why = "Why the highest-scoring samples score high: the squared residual of each input element"
    blocks.append(("image", (RESIDUALS, why + " (aecli score lists the largest per row)")))
    if _shows_class_extremes(run, metrics):
        blocks.append(
            ("image", (CLASS_EXTREMES, "Per class: its least and most anomalous image, and where each differs"))
        )
    if "latent" in metrics:
        latent = {k: v for k, v in metrics["latent"].items() if k != "knn"}
        blocks += [("heading", "Latent space"), ("table", latent)]
    blocks.append(("image", ("latent.png", "Latent codes in two dimensions")))
    return blocks


def _shows_class_extremes(run: TrainedRun, metrics: dict[str, Any]) -> bool:
    """Labelled images: the report shows each class's least and most anomalous image."""
    return len(run.sample_shape) == 3 and "per_class" in metrics


def _describe_model(model: ModelConfig) -> str:
    if model.code == "feature_map" and model.has_blocks:
        return f"{model.kind}: filters {model.filters}, the last block's feature map as the code"
    return f"{model.kind}: encoder {model.encoder}, latent {model.latent_dim}, decoder {model.decoder}"


def _time_blocks(in_time: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report's section on anomalies in time: settings, flagged ranges, the plot, detection."""
    summary = {key: in_time[key] for key in ("score", "points", "threshold_spec", "threshold", "steps", "windows")}
    summary["flagged steps"] = in_time["flagged_steps"]
    blocks: list[tuple[str, Any]] = [("heading", "Anomalies in time"), ("table", summary)]
    ranges = in_time["ranges"]
    if ranges:
        header = ["start", "end", "steps", "peak_time", "peak_score"]
        blocks.append(("table", [header] + [[entry[key] for key in header] for entry in ranges[:50]]))
    else:
        blocks.append(("text", "No step is over the threshold."))
    blocks.append(("image", ("anomalies.png", "The series with flagged ranges shaded, and each step's score")))
    detection = in_time.get("detection")
    if detection is not None:
        table = {key: value for key, value in detection.items() if key != "windows"}
        blocks += [("heading", "Detection against the labelled anomalies"), ("table", table)]
        header = ["start", "end", "detected", "first_flag", "delay_steps"]
        rows = [[entry.get(key, "") for key in header] for entry in detection["windows"][:50]]
        if rows:
            blocks.append(("table", [header, *rows]))
    nab = in_time.get("nab")
    if nab is not None:
        blocks.append(("text", "NAB scores (0 = detect nothing, 100 = every window at its first step):"))
        header = ["profile", "at the run's threshold", "at this file's best threshold"]
        blocks.append(("table", [header] + [[name, v["at_threshold"], v["best"]] for name, v in nab.items()]))
    return blocks
