"""`aecli train`: data -> model -> fit -> a complete run directory.

Everything that can be checked without training (config, data, model size) is checked
before the run directory exists, so bad input never leaves a run behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import aecli
from aecli.backend import import_tensorflow, select_backend
from aecli.config import AecliConfig, config_to_yaml, load_config
from aecli.data import Dataset, is_shard_source, load_dataset, with_absolute_paths
from aecli.distribute import check_mixed_precision, mixed_precision_policy, replicas, start_strategy, writes_run
from aecli.errors import ConfigError, DataError, RunError, TrainingDivergedError, as_storage_error
from aecli.evaluation import (
    PREDICT_BATCH_SIZE,
    error_statistics,
    parse_threshold,
    predict_batched,
    reconstruction_report,
    resolve_threshold,
    streamed_reconstruction_report,
)
from aecli.fingerprints import check_unchanged, fingerprint
from aecli.models import check_model_fits_memory, count_parameters, plan_autoencoder
from aecli.reporting import write_errors_csv, write_history_csv, write_metrics_json
from aecli.runs import (
    RUN_FILE,
    check_keras_archive,
    config_digest,
    create_run_dir,
    load_model,
    now_iso,
    read_resume_state,
    read_run_info,
    recorded_fingerprints,
    run_lock,
    save_atomic,
    update_run_info,
    write_json_atomic,
    write_text_atomic,
)
from aecli.shards import ShardedData, check_streamable, open_sharded

DEFAULT_THRESHOLD = parse_threshold("percentile:95")


@dataclass
class TrainOutcome:
    run_dir: Path
    metrics: dict[str, Any]
    written: bool = True  # False on a non-chief worker: its scratch run directory is gone


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
    strategy = start_strategy(config.training.distribute)  # before anything else touches TensorFlow
    chief = writes_run(config.training.distribute)
    # Saved with absolute paths, so evaluate/reconstruct find the data from any folder.
    config = config.model_copy(update={"data": with_absolute_paths(config.data)})
    dataset = _training_data(config)
    _check_loss_matches_data(config, dataset)
    plan = plan_autoencoder(config.model, dataset.sample_shape)
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
        "replicas": replicas(strategy),
    }
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="aecli-worker-"))
    try:
        run_dir = _new_run_dir(scratch or runs_dir, name, config, record)
        if on_run_dir and chief:
            on_run_dir(run_dir)
        with run_lock(run_dir):
            metrics = _run_guarded(config, dataset, run_dir, reporter, resume=False, strategy=strategy)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return TrainOutcome(run_dir, metrics, written=chief)


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


def resume_run(run_dir: Path, reporter: Any = None) -> ResumeOutcome:
    """Continue an interrupted (or killed) run in place to its configured number of epochs."""
    info = read_run_info(run_dir)
    if info["status"] == "completed":
        return ResumeOutcome(run_dir, None)
    config = load_config(run_dir / "config.yaml")
    select_backend(config.runtime.backend)
    strategy = start_strategy(config.training.distribute)
    if not config.training.checkpoint.last:
        raise RunError(f"run {run_dir} kept no last checkpoint (training.checkpoint.last is off): train it again")
    if writes_run(config.training.distribute):
        return _resume_in(run_dir, config, strategy, reporter)
    # A non-chief worker resumes from the chief's run directory (a shared file system) in a
    # scratch copy, so it reads the same checkpoint and writes nothing the chief owns.
    scratch = Path(tempfile.mkdtemp(prefix="aecli-worker-"))
    try:
        copy = Path(shutil.copytree(run_dir, scratch / run_dir.name))
        return dataclasses.replace(_resume_in(copy, config, strategy, reporter), run_dir=run_dir, written=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _resume_in(run_dir: Path, config: AecliConfig, strategy: Any, reporter: Any) -> ResumeOutcome:
    """Everything a resume needs is checked before run.json changes: a refused resume leaves
    the run exactly as it was (status included)."""
    with run_lock(run_dir):
        try:
            state = read_resume_state(run_dir)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"run {run_dir}: unreadable checkpoints/state.json ({exc})") from None
        if state is not None:
            check_keras_archive(run_dir / "checkpoints" / "last.keras")
        info = read_run_info(run_dir)
        if state is not None and state.epoch > config.training.epochs:
            raise RunError(
                f"run {run_dir}: checkpoints/state.json says epoch {state.epoch} of {config.training.epochs}"
            )
        recorded_config = info.get("config_sha256")
        if recorded_config is not None and recorded_config != config_digest(run_dir / "config.yaml"):
            raise RunError(
                f"run {run_dir}: config.yaml was edited after the run started, but a resume continues the saved "
                "model and optimizer; restore it, or train a new run with the edited config"
            )
        check_unchanged(recorded_fingerprints(info), force=False)
        dataset = _training_data(config)
        resumes = [*info.get("resumed", []), {"at": now_iso(), "from_epoch": 0 if state is None else state.epoch}]
        update_run_info(run_dir, status="running", finished=None, error=None, resumed=resumes)
        metrics = _run_guarded(config, dataset, run_dir, reporter, resume=True, strategy=strategy, previous_info=info)
    return ResumeOutcome(run_dir, metrics, 0 if state is None else state.epoch)


def _run_guarded(
    config: AecliConfig,
    dataset: Dataset | ShardedData,
    run_dir: Path,
    reporter: Any,
    resume: bool,
    strategy: Any = None,
    previous_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and report, recording in run.json how it ended: completed, failed or interrupted.

    `previous_info`: a resumed run's record before this attempt, restored when the attempt is
    refused (a config or run error) so that a refused resume changes nothing."""
    try:
        metrics = _train_and_report(config, dataset, run_dir, reporter, resume, strategy)
    except OSError as exc:
        storage = as_storage_error(exc)
        if storage is None:
            _record_end(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        # The disk is full: checkpoints/last.keras (written atomically) is the last complete
        # epoch, and the run continues from it once there is space.
        _record_end(run_dir, status="interrupted", error=str(storage))
        raise storage from None
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


def _training_data(config: AecliConfig) -> Dataset | ShardedData:
    """Arrays in memory, or for a shard folder a streamed view of it (data larger than memory)."""
    if not is_shard_source(config.data.source):
        return load_dataset(config.data, seed=config.training.seed)
    check_streamable(config.optimizer.name)
    return open_sharded(config.data, seed=config.training.seed)


def _check_loss_matches_data(config: AecliConfig, dataset: Dataset | ShardedData) -> None:
    if isinstance(dataset, ShardedData):
        low, high = dataset.scaled_range
    else:
        low, high = float(dataset.x_train.min()), float(dataset.x_train.max())
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


def _train_and_report(
    config: AecliConfig,
    dataset: Dataset | ShardedData,
    run_dir: Path,
    reporter: Any,
    resume: bool = False,
    strategy: Any = None,
) -> dict[str, Any]:
    import_tensorflow()
    import keras

    from aecli.training import choose_jit_compile, fit_autoencoder, seed_everything

    seed_everything(config.training.seed)
    state = read_resume_state(run_dir) if resume else None
    keras.config.set_dtype_policy(mixed_precision_policy(config.training.mixed_precision))
    try:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            autoencoder = _model_to_train(config, dataset, run_dir, resumed=state is not None)
    finally:
        keras.config.set_dtype_policy("float32")  # later models in this process (compare) start clean
    if isinstance(dataset, ShardedData):
        validation: Any = dataset.stream("validation") if dataset.counts["validation"] else None
        train_input: Any = dataset.stream("train")
    else:
        train_input, validation = dataset.x_train, dataset.x_val
    jit = choose_jit_compile(autoencoder.model, config.training, distributed=strategy is not None)
    update_run_info(run_dir, jit_compile=jit.to_dict())
    result = fit_autoencoder(
        autoencoder.model,
        train_input,
        validation,
        config.training,
        config.optimizer,
        config.loss,
        run_dir,
        reporter,
        state,
        strategy,
        jit,
    )
    for part in ("model", "encoder", "decoder"):
        save_atomic(run_dir / f"{part}.keras", getattr(autoencoder, part).save)
    write_history_csv(run_dir / "history.csv", result.history)
    if not writes_run(config.training.distribute):
        return {}  # a non-chief worker: its scratch run is discarded, so is any report

    started = time.perf_counter()
    # A distributed model's predictions would go through the strategy (collective ops every
    # worker must join): the report uses the saved model, as a plain single-device copy.
    model = autoencoder.model if strategy is None else load_model(run_dir / "model.keras")
    if isinstance(dataset, ShardedData):  # one pass per split; only per-sample errors are kept
        test = streamed_reconstruction_report(model, dataset.batches("test", PREDICT_BATCH_SIZE), dataset.label_names)
        train = streamed_reconstruction_report(model, dataset.batches("train", PREDICT_BATCH_SIZE))
        metrics, errors, y_test, test_origin = test.metrics, test.errors, test.labels, {"source_row": test.source_rows}
        train_report, train_errors, y_train = train.metrics, train.errors, train.labels
        train_origin = {"source_row": train.source_rows}
        train_report.pop("per_class", None)
    else:
        y_test, y_train = dataset.y_test, dataset.y_train
        metrics, errors = reconstruction_report(
            dataset.x_test, predict_batched(model, dataset.x_test), y_test, dataset.label_names
        )
        train_report, train_errors = reconstruction_report(
            dataset.x_train, predict_batched(model, dataset.x_train), None
        )
        test_origin, train_origin = dataset.origin("test"), dataset.origin("train")
    write_errors_csv(run_dir / "errors.csv", errors, y_test, dataset.label_names, origin=test_origin)
    train_mse = train_errors["mse"]
    write_errors_csv(run_dir / "train_errors.csv", train_errors, y_train, dataset.label_names, origin=train_origin)
    metrics["split"] = "test"
    metrics["training"] = _training_summary(result, config.training.epochs, int(model.count_params()), strategy)
    metrics["train_errors"] = {
        "score": "mse",
        **error_statistics(train_mse),
        "default_threshold": str(DEFAULT_THRESHOLD),
        "default_threshold_value": resolve_threshold(DEFAULT_THRESHOLD, train_mse, train_mse),
        "reconstruction": train_report["reconstruction"],
    }
    metrics["evaluation_seconds"] = time.perf_counter() - started
    write_metrics_json(run_dir / "metrics.json", metrics)
    return metrics


def _training_summary(result: Any, epochs_configured: int, parameters: int, strategy: Any) -> dict[str, Any]:
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
        "replicas": replicas(strategy),
    }


def _model_to_train(config: AecliConfig, dataset: Dataset | ShardedData, run_dir: Path, resumed: bool) -> Any:
    """A new model, or the last checkpoint's (with its optimizer state) when resuming."""
    from aecli.layers import MultiWorkerTrainer
    from aecli.models import Autoencoder, build_autoencoder

    if not resumed:
        return build_autoencoder(config.model, dataset.sample_shape, config.loss.name)
    model = load_model(run_dir / "checkpoints" / "last.keras")
    if isinstance(model, MultiWorkerTrainer):  # a multi-worker checkpoint: the autoencoder inside
        optimizer, model = model.optimizer, model.autoencoder
        model.compile(optimizer=optimizer)  # fit continues with the restored optimizer state
    halves = (getattr(model, "encoder", None), getattr(model, "decoder", None))
    if halves[0] is None or halves[1] is None:
        halves = (model.get_layer("encoder"), model.get_layer("decoder"))
    return Autoencoder(model, *halves)
