"""A completed run read back: its config, scaling and model files, checked before use, for the
commands that use a trained model (evaluate, reconstruct)."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aecli.atomic import read_json
from aecli.backend import import_tensorflow
from aecli.config import AecliConfig, DataConfig, TextConfig, build_config, load_config
from aecli.data import Dataset, Samples, Scaling, load_dataset, load_for_model
from aecli.data.vocabulary import VOCABULARY_FILE
from aecli.errors import AecliError, ConfigError, DataError, RunError, clip
from aecli.fingerprints import check_unchanged
from aecli.runs import REQUIRED_ARTIFACTS, config_digest, read_run_info, recorded_fingerprints


@dataclass(frozen=True)
class TrainedRun:
    """A completed run, read back: what evaluate and reconstruct need to use its model."""

    path: Path
    info: dict[str, Any]
    config: AecliConfig
    scaling: Scaling
    sample_shape: tuple[int, ...]
    metrics: dict[str, Any]

    def data_config_for(self, source: str, overrides: Sequence[str], option: str) -> DataConfig:
        """How to read another source the way this run read its data: a CSV keeps the run's label
        and id columns; nothing that selects rows (limit, classes) carries over, so every row is
        read unless a `--set data.KEY=VALUE` override says otherwise."""
        data: dict[str, Any] = {"source": source}
        own = self.config.data
        if own.series is not None:  # the same value columns (another file's extra columns are not values), windows
            series = own.series.model_dump()
            if series["value_columns"] is None:
                series["value_columns"] = self.info["data"].get("series", {}).get("value_columns")
            data |= {"series": series, "window": own.window.model_dump()}
        if own.sequences is not None:
            data["sequences"] = own.sequences.model_dump()
        if own.text is not None:
            return self._text_config_for(source, overrides, option)
        if source.lower().endswith(".csv"):
            for key in ("label_column", "id_column"):
                if getattr(own, key) is not None:
                    data[key] = getattr(own, key)
        return build_config(base={"data": data}, overrides=overrides, allowed=("data",), command=option).data

    def _text_config_for(self, source: str, overrides: Sequence[str], option: str) -> DataConfig:
        """A text source read with the run's vectorizer: its settings and its vocabulary.tsv (checked
        against the digest recorded at training), the run's columns for a table; `--set` may change
        the columns and rows read, never the vectorizer."""
        own = self.config.data
        assert own.text is not None
        vocabulary = self.path / VOCABULARY_FILE
        recorded = self.info.get("vocabulary", {}).get("sha256")
        if not vocabulary.is_file() or (recorded is not None and recorded != config_digest(vocabulary)):
            raise RunError(
                f"run {self.path}: {VOCABULARY_FILE} is missing or changed since training; its model reads token "
                "ids of that vocabulary: restore the file or train again"
            )
        data: dict[str, Any] = {
            "source": source,
            "text": {**own.text.model_dump(mode="json"), "vocabulary": str(vocabulary)},
        }
        if source.lower().endswith((".csv", ".tsv", ".jsonl")):
            data |= {key: getattr(own, key) for key in ("text_column", "label_column", "id_column")}
        base = {"data": data, "model": {"kind": self.config.model.kind}}  # which vectors the model reads
        cfg = build_config(base=base, overrides=overrides, allowed=("data",), command=option).data
        if cfg.text != TextConfig.model_validate(data["text"]):
            raise ConfigError(
                f"--set data.text: {option} reads texts with the run's own vectorizer (data.text as trained, and "
                f"{VOCABULARY_FILE}); only the columns and rows read may change"
            )
        return cfg

    def read_samples(self, source: str, overrides: Sequence[str], option: str) -> Samples:
        """Every row of a source named on the command line, read the way the run read its data
        and scaled for its model; errors name the option."""
        cfg = self.data_config_for(source, overrides, option)
        try:
            return load_for_model(cfg, self.sample_shape, self.scaling, self.feature_names)
        except DataError as exc:
            raise DataError(str(exc).replace("data.source", option, 1)) from None

    @property
    def feature_names(self) -> list[str] | None:
        """The names of the table columns the run trained on (None: not a table with a header,
        or a run trained before they were recorded)."""
        names = self.info.get("data", {}).get("feature_names")
        return [str(name) for name in names] if isinstance(names, list) else None

    def test_split(self, force: bool) -> Dataset:
        """The run's own test split, rebuilt from its data files: refused when a file changed
        since training (unless `force`) or when the data no longer has the model's shape."""
        check_unchanged(recorded_fingerprints(self.info), force)
        dataset = load_dataset(self.config.data, seed=self.config.training.seed, test_only=True)
        if dataset.sample_shape != self.sample_shape:
            raise DataError(
                f"data.source {self.config.data.source}: samples now have shape {dataset.sample_shape}, but the "
                f"run's model was trained on {self.sample_shape}"
            )
        return dataset


def open_trained_run(run_dir: Path, needs: Sequence[str] = ()) -> TrainedRun:
    """Check that `run_dir` is a completed run with all its artifacts (and the files in `needs`),
    and read its records."""
    info = read_run_info(run_dir)
    if info["status"] != "completed":
        raise RunError(f"run {run_dir} is {info['status']}, not completed; train it again (or resume it)")
    missing = [name for name in (*REQUIRED_ARTIFACTS, "metrics.json", *needs) if not (run_dir / name).is_file()]
    if missing:
        raise RunError(f"run {run_dir} is incomplete: missing {', '.join(missing)}")
    try:
        config = load_config(run_dir / "config.yaml")
        metrics = read_json(run_dir / "metrics.json", "metrics")
        str(metrics["train_errors"]["default_threshold"])
        data = info["data"]
        scaling = Scaling.from_dict(data["scaling"])
        sample_shape = tuple(int(size) for size in data["sample_shape"])
        _check_scaling(scaling, sample_shape)
    except (AecliError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise RunError(f"run {run_dir} has unreadable records ({clip(str(exc))})") from None
    return TrainedRun(run_dir, info, config, scaling, sample_shape, metrics)


def refuse_text_run(run: TrainedRun, command: str) -> None:
    """The commands that score raw feature rows do not read texts (yet): say what does."""
    if run.config.data.text is not None:
        raise RunError(
            f"{command}: run {run.path} models texts; use aecli embed, evaluate (anomalies: --normal-classes) or "
            "reconstruct"
        )


def _check_scaling(scaling: Scaling, sample_shape: tuple[int, ...]) -> None:
    """A saved scaling is one number, one per feature, or one per channel, finite, and never divides by zero."""
    sizes = {1, math.prod(sample_shape), sample_shape[-1]}
    if scaling.offset.size not in sizes or scaling.scale.size not in sizes:
        raise ValueError(f"data.scaling does not fit samples of shape {sample_shape}")
    if not (np.isfinite(scaling.offset).all() and np.isfinite(scaling.scale).all() and (scaling.scale != 0).all()):
        raise ValueError("data.scaling holds values that are not finite, or a zero scale")


def load_encoder(run_dir: Path) -> Any:
    """The run's encoder of model inputs. A text run's encoder.keras on TensorFlow takes raw
    strings (its vectorizer in front): aecli vectorizes itself and uses the encoder inside."""
    encoder = load_model(run_dir / "encoder.keras", compile=False)
    if "string" in str(encoder.inputs[0].dtype):
        return encoder.get_layer("encoder")
    return encoder


def load_model(path: Path, compile: bool = True) -> Any:
    """Load a `.keras` file with safe mode on: a file carrying code (a Lambda layer) is refused.

    `compile=False` skips the optimizer state: what inference (evaluate, reconstruct) loads."""
    import_tensorflow()
    import keras

    # registers aecli's custom objects (VAE, sparse and text models)
    import aecli.layers
    import aecli.text_layers  # noqa: F401

    check_keras_archive(path)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:  # Keras raises many types for corrupt, foreign or unsafe files
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RunError(f"model file {path} failed to load: {reason}") from None


def check_keras_archive(path: Path) -> None:
    """A `.keras` file is a zip archive; Keras reports a damaged one as "File not found"."""
    if not path.is_file():
        raise RunError(f"model file {path} is missing")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise RunError(f"model file {path} is corrupt or truncated (not a complete .keras archive: {exc})") from None
    if damaged is not None:
        raise RunError(f"model file {path} is corrupt: {damaged} inside it fails its checksum")
