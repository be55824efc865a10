"""`aecli train`: data -> model -> fit -> a complete run directory.

Everything that can be checked without training (config, data, model size) is checked
before the run directory exists, so bad input never leaves a run behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import aecli
from aecli.atomic import save_atomic, write_json_atomic, write_text_atomic
from aecli.augment import augmented_examples, augmenter, check_augment
from aecli.backend import import_tensorflow, select_backend
from aecli.calibration import VALIDATION_ERRORS, Errors, calibrate, record_threshold
from aecli.code_scores import CODE_SCORES, CodeSpace
from aecli.config import TEXT_KINDS, AecliConfig, AnomalyConfig, config_to_yaml, load_config
from aecli.data import Dataset, TrainingData, is_streamed, open_training_data
from aecli.data.shards import ShardedData, check_streamable
from aecli.data.text_stream import StreamedTexts
from aecli.data.vocabulary import VOCABULARY_FILE
from aecli.distribute import ClusterError, Placement, check_mixed_precision, cluster_errors, place
from aecli.errors import ConfigError, DataError, RunError, TrainingDivergedError, as_storage_error
from aecli.evaluation import SplitReport, error_statistics, predict_fixed, report_split
from aecli.fingerprints import check_unchanged, fingerprint
from aecli.models import (
    Autoencoder,
    LayerSpec,
    TextModelInput,
    build_autoencoder,
    check_model_fits_memory,
    count_parameters,
    dtype_policy,
    plan_autoencoder,
)
from aecli.reporting import plot_image_rows, write_errors_csv, write_history_csv, write_metrics_json
from aecli.runs import (
    AUGMENTED_SAMPLES,
    RUN_FILE,
    ResumeState,
    config_digest,
    create_run_dir,
    now_iso,
    read_resume_state,
    read_run_info,
    recorded_fingerprints,
    run_lock,
    update_run_info,
)
from aecli.thresholds import auto_threshold
from aecli.trained_run import check_keras_archive, load_model


@dataclass
class TrainOutcome:
    run_dir: Path
    metrics: dict[str, Any]
    written: bool = True  # False on a non-chief worker: its scratch run directory is gone
    reading: dict[str, int] | None = None  # what this process read of a shard folder


def train_run(
    config: AecliConfig,
    runs_dir: Path,
    name: str,
    command: str,
    reporter: Any = None,
    on_run_dir: Any = None,
) -> TrainOutcome:
    """Train one autoencoder described by `config` into a new folder under `runs_dir`.

    Under a multi-worker strategy only the chief writes there; the other workers train into a
    scratch folder that is removed at the end.
    """
    select_backend(config.runtime.backend)
    placement = place(config.training.distribute)  # before anything else touches TensorFlow
    with cluster_errors(placement, "start every worker again with the same command"):
        dataset = _training_data(config, placement)
    # model.widths from_features and training.steps: the widths and epochs this data needs
    config = config.sized_for(dataset.sample_shape, dataset.shapes()["train"])
    _check_loss_matches_data(config, dataset)
    check_augment(config.data.augment, dataset.sample_shape)
    plan = plan_autoencoder(config.model, dataset.sample_shape, _vocabulary_size(config))
    check_model_fits_memory(plan)
    check_mixed_precision(config.training.mixed_precision, config.runtime.backend)

    record = {
        "status": "running",
        "started": now_iso(),
        "finished": None,
        "seed": config.training.seed,
        "command": command,
        "versions": _versions(),
        "data": {
            **dataset.description,
            **dataset.shapes(),
            "scaling": dataset.scaling.to_dict(),
            "label_names": dataset.label_names,
            "fingerprints": fingerprint(config.data),
        },
        "model": {"kind": config.model.kind, "parameters": count_parameters(plan)},
        "backend": config.runtime.backend,
        "replicas": placement.replicas,
        **_worker_reading(dataset, placement),
    }
    scratch = None if placement.chief else worker_scratch()
    try:
        run_dir = _new_run_dir(scratch or runs_dir, name, config, record)
        if on_run_dir and placement.chief:
            on_run_dir(run_dir)
        with run_lock(run_dir):
            shown = run_dir if placement.chief else None  # a non-chief's run_dir is its scratch
            attempt = _Attempt(config, dataset, run_dir, reporter, placement, plan, shown_dir=shown)
            metrics = _run_guarded(attempt, resume=False)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return TrainOutcome(run_dir, metrics, written=placement.chief, reading=_reading(dataset))


SCRATCH_PREFIX = "aecli-worker-"


def worker_scratch() -> Path:
    """A non-chief worker's scratch folder, named after its host and process; folders left on
    this host by workers that were killed (their process is gone) are removed first. (Other
    hosts' folders are never touched: a shared TMPDIR may hold live workers' folders.)"""
    mine = f"{SCRATCH_PREFIX}{socket.gethostname()}-"
    for stale in Path(tempfile.gettempdir()).glob(f"{mine}*"):
        pid = stale.name.removeprefix(mine).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _new_run_dir(parent: Path, name: str, config: AecliConfig, record: dict[str, Any]) -> Path:
    """A new run directory holding config.yaml and run.json, or none at all if they cannot be written."""
    run_dir = create_run_dir(parent, name)
    try:
        write_text_atomic(run_dir / "config.yaml", config_to_yaml(config))
        update_run_info(run_dir, **record, config_sha256=config_digest(run_dir / "config.yaml"))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


@dataclass
class ResumeOutcome:
    run_dir: Path
    metrics: dict[str, Any] | None  # None when the run had already completed
    from_epoch: int = 0
    written: bool = True  # False on a non-chief worker, which resumed in a scratch copy
    reading: dict[str, int] | None = None  # what this process read of a shard folder


def resume_run(run_dir: Path, reporter: Any = None) -> ResumeOutcome:
    """Continue an interrupted (or killed) run in place to its configured number of epochs."""
    info = read_run_info(run_dir)
    if info["status"] == "completed":
        return ResumeOutcome(run_dir, None)
    config = load_config(run_dir / "config.yaml")
    select_backend(config.runtime.backend)
    placement = place(config.training.distribute)
    if not config.training.checkpoint.last:
        raise RunError(f"run {run_dir} kept no last checkpoint (training.checkpoint.last is off): train it again")
    if placement.chief:
        return _resume_in(run_dir, config, placement, reporter, run_dir)
    # A non-chief worker resumes from the chief's run directory (a shared file system) in a
    # scratch copy, so it reads the same checkpoint and writes nothing the chief owns.
    scratch = worker_scratch()
    try:
        copy = Path(shutil.copytree(run_dir, scratch / run_dir.name))
        resumed = _resume_in(copy, config, placement, reporter, run_dir)
        return dataclasses.replace(resumed, run_dir=run_dir, written=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _resume_in(
    run_dir: Path, config: AecliConfig, placement: Placement, reporter: Any, shown_dir: Path
) -> ResumeOutcome:
    """Everything a resume needs is checked before run.json changes: a refused resume leaves
    the run exactly as it was (status included). `shown_dir`: the run as users know it (a
    non-chief worker resumes in a scratch copy of it)."""
    with run_lock(run_dir):
        state = _checked_resume_state(run_dir, config)
        info = read_run_info(run_dir)
        recorded_config = info.get("config_sha256")
        if recorded_config is not None and recorded_config != config_digest(run_dir / "config.yaml"):
            raise RunError(
                f"run {run_dir}: config.yaml was edited after the run started, but a resume continues the saved "
                "model and optimizer; restore it, or train a new run with the edited config"
            )
        check_unchanged(recorded_fingerprints(info), force=False)
        with cluster_errors(placement, _resume_step(shown_dir)):
            dataset = _training_data(config, placement)
        plan = plan_autoencoder(config.model, dataset.sample_shape, _vocabulary_size(config))
        resumes = [*info.get("resumed", []), {"at": now_iso(), "from_epoch": 0 if state is None else state.epoch}]
        update_run_info(run_dir, status="running", finished=None, error=None, resumed=resumes)
        attempt = _Attempt(config, dataset, run_dir, reporter, placement, plan, state, shown_dir)
        metrics = _run_guarded(attempt, resume=True, previous_info=info)
    return ResumeOutcome(run_dir, metrics, 0 if state is None else state.epoch, reading=_reading(dataset))


def _checked_resume_state(run_dir: Path, config: AecliConfig) -> ResumeState | None:
    try:
        state = read_resume_state(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"run {run_dir}: unreadable checkpoints/state.json ({exc})") from None
    if state is not None:
        check_keras_archive(run_dir / "checkpoints" / "last.keras")
        if state.epoch > config.training.epochs:
            raise RunError(
                f"run {run_dir}: checkpoints/state.json says epoch {state.epoch} of {config.training.epochs}"
            )
    return state


@dataclass(frozen=True)
class _Attempt:
    """One attempt at training a run: everything decided before it starts."""

    config: AecliConfig
    data: TrainingData
    run_dir: Path
    reporter: Any
    placement: Placement
    plan: list[LayerSpec]
    state: ResumeState | None = None  # where a resumed run continues from
    shown_dir: Path | None = None  # the run users resume (None: a new run's non-chief worker)

    def resume_step(self) -> str:
        return _resume_step(self.shown_dir)


def _resume_step(run_dir: Path | None) -> str:
    """What to do after a lost worker: every worker resumes the run."""
    where = str(run_dir) if run_dir is not None else "RUN_DIR (the run directory the chief printed)"
    return f"start every worker again with aecli train --resume {where} to continue from the last finished epoch"


def _run_guarded(attempt: _Attempt, resume: bool, previous_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and report, recording in run.json how it ended: completed, failed or interrupted.

    `previous_info`: a resumed run's record before this attempt, restored when the attempt is
    refused (a config or run error) so that a refused resume changes nothing."""
    run_dir = attempt.run_dir
    try:
        with cluster_errors(attempt.placement, attempt.resume_step()):
            metrics = _train_and_report(attempt)
    except OSError as exc:
        storage = as_storage_error(exc)
        if storage is None:
            _record_end(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        # The disk is full: checkpoints/last.keras (written atomically) is the last complete
        # epoch, and the run continues from it once there is space.
        _record_end(run_dir, status="interrupted", error=str(storage))
        raise storage from None
    except ClusterError as exc:  # another worker stopped: the finished epochs are kept
        _record_end(run_dir, status="interrupted", error=str(exc))
        raise
    except KeyboardInterrupt:
        state = read_resume_state(run_dir)
        if state is not None:  # the finished epochs, readable without opening the checkpoint
            write_history_csv(run_dir / "history.csv", state.history)
        update_run_info(run_dir, status="interrupted", finished=now_iso())
        raise
    except TrainingDivergedError as exc:
        update_run_info(run_dir, status="failed", finished=now_iso(), error=str(exc))
        raise
    except DataError:
        # Bad data met while streaming a shard folder: a new run with no finished epoch holds
        # nothing worth keeping, so it goes, as if the data had been refused before it started.
        if not resume and read_resume_state(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            update_run_info(run_dir, status="failed", finished=now_iso(), error="bad data while training")
        raise
    except (ConfigError, RunError) as exc:
        if previous_info is not None:
            write_json_atomic(run_dir / RUN_FILE, previous_info)
        else:
            _record_end(run_dir, status="failed", error=str(exc))
        raise
    except BaseException as exc:
        _record_end(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    update_run_info(run_dir, status="completed", finished=now_iso())
    return metrics


def _record_end(run_dir: Path, **changes: Any) -> None:
    """Record how a run ended, if the disk still lets us: the error being raised matters more."""
    with contextlib.suppress(OSError):
        update_run_info(run_dir, **{"finished": now_iso(), **changes})


def _training_data(config: AecliConfig, placement: Placement) -> TrainingData:
    share = placement.share()
    if is_streamed(config.data):  # refused before a pass over the data
        check_streamable(config.optimizer.name)
        if share is not None:
            share.check_batch(config.training.batch_size)
    return open_training_data(config.data, seed=config.training.seed, share=share)


def _worker_reading(data: TrainingData, placement: Placement) -> dict[str, Any]:
    """For run.json on a cluster: whether each worker reads only its own files, and if not why."""
    if not placement.multi_worker:
        return {}
    if not isinstance(data, ShardedData):
        held = "a streamed text file" if isinstance(data, StreamedTexts) else "in-memory data"
        note = f"{held}: every worker reads the whole source and keeps every n-th batch"
        return {"worker_input": {"files_per_worker": "all", "note": note}}
    if data.share is None:
        note = data.sharing_note or (
            "a cluster of one worker" if placement.workers < 2 else "workers with several replicas (GPUs) each"
        )
        return {"worker_input": {"files_per_worker": "all", "note": note}}
    rows = data.worker_counts["train"]
    return {"worker_input": {"files_per_worker": "own", "workers": data.share.count, "training_rows": rows}}


def _reading(data: TrainingData) -> dict[str, int] | None:
    return data.reading() if isinstance(data, ShardedData) else None


def _vocabulary_size(config: AecliConfig) -> int | None:
    """Token ids of texts lie below data.text.max_tokens (padding and [UNK] included)."""
    return None if config.data.text is None else config.data.text.max_tokens


def _check_loss_matches_data(config: AecliConfig, dataset: TrainingData) -> None:
    if config.anomaly.score in CODE_SCORES and isinstance(dataset, ShardedData | StreamedTexts):
        raise ConfigError(
            f"anomaly.score: {config.anomaly.score} keeps the training rows' codes, and this source is streamed; "
            "use mse, mae or bce"
        )
    if config.model.kind in TEXT_KINDS:  # a bag of words is compared as word presence: see text_layers
        return
    low, high = dataset.scaled_range
    if config.anomaly.score == "dssim" and (len(dataset.sample_shape) != 3 or not (low >= 0.0 and high <= 1.0)):
        raise ConfigError(
            "anomaly.score: dssim compares images (height, width, channels) in [0, 1], and these samples are "
            f"shape {tuple(dataset.sample_shape)} spanning [{low:g}, {high:g}]; use mse"
        )
    if config.loss.name == "bce" and not (low >= 0.0 and high <= 1.0):
        raise ConfigError(
            f"loss.name: bce needs targets in [0,1], but the training data spans [{low:g}, {high:g}] "
            f"(data.scaling is {config.data.scaling!r}); use data.scaling auto or loss mse"
        )


def _versions() -> dict[str, str]:
    tf = import_tensorflow()
    import keras

    return {
        "aecli": aecli.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        **_backend_version(keras.backend.backend()),
    }


def _backend_version(backend: str) -> dict[str, str]:
    if backend == "tensorflow":
        return {}
    import importlib

    return {backend: importlib.import_module(backend).__version__}


def _train_and_report(attempt: _Attempt) -> dict[str, Any]:
    """Build (or restore) the model, fit it, save it, and write the reconstruction-error report."""
    import_tensorflow()
    from aecli.execution import plan_for_model
    from aecli.feeds import fit_inputs
    from aecli.training import fit_autoencoder, seed_everything

    config, data, run_dir, placement = attempt.config, attempt.data, attempt.run_dir, attempt.placement
    seed_everything(config.training.seed)
    with placement.scope():
        autoencoder = _model_to_train(attempt)
    train_input, validation = fit_inputs(data)
    full_batch = config.optimizer.name == "gd"
    augmented = bool(config.data.augment.active)
    execution = plan_for_model(autoencoder.model, config.training, full_batch, train_input, placement, augmented)
    steps = {"fused_block_steps": execution.block_steps, "steps_per_execution": execution.steps_per_execution}
    update_run_info(run_dir, jit_compile=execution.jit.to_dict(), execution=steps)
    augment = augmenter(config.data.augment, data.scaled_range)
    if augment is not None and placement.chief:
        _plot_augmented(augment, data, run_dir, config.training.seed)
    result = fit_autoencoder(
        autoencoder.model,
        train_input,
        validation,
        config.training,
        config.optimizer,
        config.loss,
        run_dir,
        attempt.reporter,
        attempt.state,
        placement,
        execution,
        augment,
        model_kind=config.model.kind,
    )
    for part in ("model", "decoder"):
        save_atomic(run_dir / f"{part}.keras", getattr(autoencoder, part).save)
    _save_encoder(autoencoder.encoder, data, config, run_dir)
    write_history_csv(run_dir / "history.csv", result.history)
    if not placement.chief and not (isinstance(data, ShardedData) and data.share is not None):
        return {}  # a non-chief worker: its scratch run is discarded, so is any report
    # A distributed model's predictions would go through the strategy (collective ops every
    # worker must join): the report uses the saved model, as a plain single-device copy. Workers
    # that read their own files each report those rows, and the chief gathers them.
    model = autoencoder.model if not placement.distributed else load_model(run_dir / "model.keras")
    started = time.perf_counter()
    report = _split_reporter(config, data)
    test = report(model, data, "test", per_class=True)
    train = report(model, data, "train", per_class=False)
    held_out = report(model, data, "validation", per_class=False) if data.shapes()["validation"] else None
    if not placement.chief:
        return {}
    _add_code_scores(attempt, autoencoder.encoder, {"train": train, "test": test, "validation": held_out})
    summary = _training_summary(result, config.training.epochs, int(model.count_params()), placement)
    metrics = _error_report(test, train, held_out, data, run_dir, summary, config.anomaly)
    metrics["evaluation_seconds"] = time.perf_counter() - started
    write_metrics_json(run_dir / "metrics.json", metrics)
    if isinstance(data, ShardedData):
        update_run_info(run_dir, reading=data.reading())
    return metrics


def _add_code_scores(attempt: _Attempt, encoder: Any, reports: dict[str, SplitReport | None]) -> None:
    """For a knn or combined anomaly score: keep the training rows' codes in the run (code_scores.py),
    and add each split's knn and combined scores to its errors, so that thresholds can use them."""
    config, data, run_dir = attempt.config, attempt.data, attempt.run_dir
    if config.anomaly.score not in CODE_SCORES:
        return
    assert isinstance(data, Dataset)  # streamed sources are refused before training (_check_loss_matches_data)
    if attempt.placement.distributed:  # (the report's single-device copy, as for the model)
        encoder = load_model(run_dir / "encoder.keras")
    codes = {part: predict_fixed(encoder, data.split(part)[0]) for part, report in reports.items() if report}
    train = reports["train"]
    assert train is not None
    space, own = CodeSpace.fit(codes["train"], train.errors["mse"], config.anomaly.neighbours, config.training.seed)
    space.save(run_dir)
    train.errors.update(own)
    for part, report in reports.items():
        if report is not None and part != "train":
            report.errors.update(space.scores(codes[part], report.errors["mse"]))


def _split_reporter(config: AecliConfig, data: TrainingData) -> Any:
    """report_split, or for a text model its own cross-entropy per text."""
    if config.model.kind not in TEXT_KINDS or isinstance(data, ShardedData):
        return functools.partial(report_split, dssim=config.anomaly.score == "dssim")
    from aecli.text_evaluation import text_split_report

    kind, loss = config.model.kind, config.loss.name
    return lambda model, data, part, per_class: text_split_report(model, data, part, per_class, kind, loss)


def _save_encoder(encoder: Any, data: TrainingData, config: AecliConfig, run_dir: Path) -> None:
    """encoder.keras; for texts also vocabulary.tsv, and on TensorFlow the encoder takes raw
    strings (the run's TextVectorization in front of it; other backends run that layer in the
    input pipeline, so there encoder.keras takes the vectorized texts)."""
    vocabulary = getattr(data, "vocabulary", None)
    if vocabulary is None or config.data.text is None:
        save_atomic(run_dir / "encoder.keras", encoder.save)
        return
    vocabulary.write(run_dir / VOCABULARY_FILE)
    digest = config_digest(run_dir / VOCABULARY_FILE)  # checked whenever the run reads texts again
    update_run_info(run_dir, vocabulary={"file": VOCABULARY_FILE, "tokens": len(vocabulary.tokens), "sha256": digest})
    if config.runtime.backend == "tensorflow":
        from aecli.vectorizer import string_encoder

        encoder = string_encoder(encoder, config.data.text, vocabulary)
    save_atomic(run_dir / "encoder.keras", encoder.save)


def _plot_augmented(
    augment: Any, data: TrainingData, run_dir: Path, seed: int, count: int = 8, copies: int = 3
) -> None:
    """A picture of what the model trains on: a few training images and augmented versions of them."""
    if isinstance(data, ShardedData | StreamedTexts):
        images = next(data.batches("train", count), (np.empty((0, *data.sample_shape)),))[0][:count]
    else:
        images = data.x_train[:count]
    if not len(images):
        return
    low, high = data.scaled_range
    shown = [
        (images - low) / max(high - low, 1e-12)
        for images in [images, *augmented_examples(augment, images, copies, seed)]
    ]
    rows = [("training\nimage", shown[0])] + [(f"augmented\n#{n}", batch) for n, batch in enumerate(shown[1:], 1)]
    plot_image_rows(rows, run_dir / AUGMENTED_SAMPLES)


def _error_report(
    test: SplitReport,
    train: SplitReport,
    validation: SplitReport | None,
    data: TrainingData,
    run_dir: Path,
    training: dict[str, Any],
    anomaly: AnomalyConfig,
) -> dict[str, Any]:
    """errors.csv, train_errors.csv and val_errors.csv (per sample), thresholds.json, and the
    metrics.json body: test-split reconstruction, how training went, and the training errors
    that anomaly thresholds use."""
    names = data.label_names
    write_errors_csv(run_dir / "errors.csv", test.errors, test.labels, names, origin=test.origin)
    write_errors_csv(run_dir / "train_errors.csv", train.errors, train.labels, names, origin=train.origin)
    if validation is not None:  # held-out normal data: what fpr thresholds are measured on
        write_errors_csv(
            run_dir / VALIDATION_ERRORS, validation.errors, validation.labels, names, origin=validation.origin
        )
    metrics, train_report = test.metrics, train.metrics
    score = anomaly.score if anomaly.score in train.errors else "mse"
    notes = list(data.description.get("notes", []))
    if score != anomaly.score:
        notes.append(f"anomaly.score {anomaly.score} needs data in [0, 1], which this data is not: mse is recorded")
    train_scores = train.errors[score]
    held_out = validation is not None and len(validation.errors[score]) > 0
    spec = auto_threshold(anomaly.threshold, held_out)
    normal = None if validation is None else Errors(validation.errors[score], f"validation split ({VALIDATION_ERRORS})")
    threshold = calibrate(spec, score, Errors(train_scores, "training split (train_errors.csv)"), normal)
    if spec.needs != "scored":  # contamination flags a share of whatever is evaluated: no fixed value
        record_threshold(run_dir, threshold)
    metrics["split"] = "test"
    metrics["training"] = training
    metrics["train_errors"] = {
        "score": score,
        **error_statistics(train_scores),
        "default_threshold": str(spec),
        "default_threshold_value": threshold.value,
        "default_threshold_from": threshold.computed_from,
        "default_threshold_false_positive_rate": threshold.expected_false_positive_rate,
        "reconstruction": train_report["reconstruction"],
    }
    if notes:  # e.g. gaps in a series' time, or values filled: said with the results
        metrics["data_notes"] = notes
    return metrics


def _training_summary(result: Any, epochs_configured: int, parameters: int, placement: Placement) -> dict[str, Any]:
    """How the fit went, for metrics.json."""
    return {
        "epochs_run": result.epochs_run,
        "epochs_configured": epochs_configured,
        "best_epoch": result.best_epoch,
        "best_loss": result.best_loss,
        "monitor": result.monitor,
        "final_loss": result.history[-1]["loss"],
        "final_val_loss": result.history[-1].get("val_loss"),
        "wall_seconds": result.seconds,
        "samples_per_second": result.samples_per_second,
        "parameters": parameters,
        "replicas": placement.replicas,
    }


def _model_to_train(attempt: _Attempt) -> Any:
    """A new model, or the last checkpoint's (with its optimizer state) when resuming."""
    from aecli.layers import MultiWorkerTrainer

    config = attempt.config
    mixed = bool(config.training.mixed_precision)
    if attempt.state is None:
        text = None
        if config.model.kind == "sequence" and config.data.text is not None:
            text = TextModelInput(config.data.text.max_tokens, config.training.noise, config.training.seed)
        shape = attempt.data.sample_shape
        return build_autoencoder(config.model, shape, config.loss.name, mixed, attempt.plan, text)
    with dtype_policy(mixed):  # a mixed-precision checkpoint's optimizer (loss scaling) loads as saved
        model = load_model(attempt.run_dir / "checkpoints" / "last.keras")
        if isinstance(model, MultiWorkerTrainer):  # a multi-worker checkpoint: the autoencoder inside
            optimizer, model = model.optimizer, model.autoencoder
            model.compile(optimizer=optimizer)  # fit continues with the restored optimizer state
    halves = (getattr(model, "encoder", None), getattr(model, "decoder", None))
    if halves[0] is None or halves[1] is None:
        halves = (model.get_layer("encoder"), model.get_layer("decoder"))
    return Autoencoder(model, *halves)
