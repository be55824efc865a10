"""From a data config to what the rest of aecli uses: `open_training_data` decides once whether
the data is held in memory (`Dataset`) or streamed (`ShardedData`); `load_dataset` and
`load_for_model` give arrays for the commands that need them (evaluate, reconstruct)."""

from __future__ import annotations

import dataclasses

import numpy as np

from aecli.config import DataConfig
from aecli.data.arrays import Dataset, Rows, Samples, fit_to_model, sample_shape_of
from aecli.data.features import feature_positions
from aecli.data.labels import class_mask
from aecli.data.scaling import Scaling, fit_channel_scaling, fit_scaling
from aecli.data.shards import ShardedData
from aecli.data.sharing import WorkerShare
from aecli.data.sources import kind_of, read_data
from aecli.data.text_stream import StreamedTexts
from aecli.errors import DataError

TrainingData = Dataset | ShardedData | StreamedTexts


def open_training_data(cfg: DataConfig, seed: int, share: WorkerShare | None = None) -> TrainingData:
    """Arrays in memory, or for a source too large for memory (a shard folder, a large text file) a streamed view
    of it; either way split (seeded) and scaled the same way. `share`: this process is one
    worker of a cluster, and a streamed source is read a share of its files per worker."""
    kind = kind_of(cfg)
    if kind.stream is not None and kind.streams_source(cfg):
        return kind.stream(cfg, seed, share)
    return load_dataset(cfg, seed)


def load_dataset(cfg: DataConfig, seed: int, test_only: bool = False) -> Dataset:
    """Read `cfg.source`, split off test/validation rows (seeded), filter classes and scale.

    `test_only`: the caller reads only the test split; a shard folder then loads nothing else.
    """
    kind = kind_of(cfg)
    if kind.stream is not None and kind.streams_source(cfg):  # the same rows per split as streamed training saw
        return kind.stream(cfg, seed).materialize(("test",) if test_only else ("train", "validation", "test"))
    if kind.load is not None:
        return kind.load(cfg, seed)
    raw = read_data(cfg)
    rng = np.random.default_rng(seed)
    pool = Rows.of(raw.x_train, raw.y_train, raw.ids_train).first(cfg.limit)
    if raw.x_test is None:
        if len(pool.x) < 3:
            raise DataError(f"data.source {cfg.source}: {len(pool.x)} rows are too few to split off a test set")
        pool, test = pool.split(cfg.test_split, rng)
    else:
        test = Rows.of(raw.x_test, raw.y_test, raw.ids_test).first(cfg.limit)
    if cfg.classes is not None:
        pool = pool.where(class_mask(pool.y, cfg.classes, raw.label_names))
    validation: Rows | None = None
    if cfg.validation_split > 0:
        if len(pool.x) < 2:
            raise DataError(f"data.validation_split: {len(pool.x)} training row(s) cannot be split further")
        pool, validation = pool.split(cfg.validation_split, rng)

    sample_shape = sample_shape_of(pool.x, raw.sequences)
    is_image = len(sample_shape) == 3 and not raw.sequences
    if raw.sequences:  # per channel, over every step
        scaling = fit_channel_scaling(pool.x.reshape((len(pool.x), *sample_shape)), cfg.scaling, default="minmax")
    else:
        scaling = fit_scaling(pool.x, cfg.scaling, is_image)

    def prepare(x: np.ndarray) -> np.ndarray:
        return scaling.apply(x.reshape((len(x), *sample_shape)))

    splits = {"train": pool, "test": test, **({"validation": validation} if validation is not None else {})}
    return Dataset(
        x_train=prepare(pool.x),
        y_train=pool.y,
        x_val=None if validation is None else prepare(validation.x),
        y_val=None if validation is None else validation.y,
        x_test=prepare(test.x),
        y_test=test.y,
        sample_shape=sample_shape,
        is_image=is_image,
        scaling=scaling,
        label_names=raw.label_names,
        description={
            "source": cfg.source,
            "source_has_test_split": raw.x_test is not None,
            **({"feature_names": raw.feature_names} if raw.feature_names else {}),
        },
        source_rows={name: rows.positions for name, rows in splits.items()},
        ids={name: rows.ids for name, rows in splits.items() if rows.ids is not None},
    )


def load_for_model(
    cfg: DataConfig, sample_shape: tuple[int, ...], scaling: Scaling, feature_names: list[str] | None = None
) -> Samples:
    """Every row of `cfg.source` (its train and test sets, each capped at `cfg.limit`), shaped and
    scaled for a trained model: used to evaluate or reconstruct data the run did not train on.
    A table's columns are taken by the run's `feature_names`, when both have names."""
    kind = kind_of(cfg)
    if kind.load_for_model is not None:
        return kind.load_for_model(cfg, sample_shape, scaling)
    raw = read_data(cfg, limit=cfg.limit)
    if raw.feature_names is not None:
        order = feature_positions(raw.feature_names, feature_names, f"data.source {cfg.source}")
        if order is not None and order != list(range(len(order))):
            raw = dataclasses.replace(raw, x_train=raw.x_train[:, order], feature_names=list(feature_names or []))
    parts = [Rows.of(raw.x_train, raw.y_train, raw.ids_train).first(cfg.limit)]
    if raw.x_test is not None:
        parts.append(Rows.of(raw.x_test, raw.y_test, raw.ids_test).first(cfg.limit))
    total = len(raw.x_train) + (0 if raw.x_test is None else len(raw.x_test))
    x = np.concatenate([part.x for part in parts])
    labels = [part.y for part in parts if part.y is not None]
    ids = [part.ids for part in parts if part.ids is not None]
    return Samples(
        fit_to_model(x, sample_shape, scaling, cfg.source),
        np.concatenate(labels) if len(labels) == len(parts) else None,
        raw.label_names,
        np.concatenate([part.positions for part in parts]),
        np.concatenate(ids) if ids and len(ids) == len(parts) else None,
        limited=len(x) < total,
    )
