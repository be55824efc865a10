"""`aecli prepare`: write any data source as a folder of shards that training streams.

The folder appears complete or not at all: shards are written into a hidden sibling folder that
is renamed into place at the end, and an existing folder is never written into.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import DataConfig, build_config
from aecli.data.shards import FORMAT, LABELS_SUFFIX, MANIFEST
from aecli.data.sources import read_data
from aecli.errors import ConfigError, RunError

SHARD_ROWS = 50_000  # rows per file unless --shard-size or --shards says otherwise

ENCODINGS = ("tfrecord", "npy")
# What prepare reads; splits, classes and scaling are training's business (shards keep every row, raw).
PREPARE_KEYS = (
    "data.labels_path",
    "data.label_column",
    "data.limit",
    "data.series.*",
    "data.window.*",
    "data.sequences.*",
)


@dataclass
class PrepareOutcome:
    out_dir: Path
    rows: dict[str, int]
    shards: int
    bytes: int


def prepare_data_config(source: str, overrides: Sequence[str]) -> DataConfig:
    """The data section for SOURCE and prepare's `--set` overrides (only the keys it reads)."""
    return build_config(
        base={"data": {"source": source}},
        overrides=overrides,
        allowed=PREPARE_KEYS,
        command="prepare",
        hint=" (the source is SOURCE)",
    ).data


def prepare_shards(
    cfg: DataConfig,
    out_dir: Path,
    shard_size: int | None,
    encoding: str,
    say: Callable[[str], None] = print,
    shards: int | None = None,
) -> PrepareOutcome:
    """Write `cfg.source` (its train and test sets, each capped at cfg.limit) to `out_dir`, in
    files of `shard_size` rows (default SHARD_ROWS), or with `shards` in that many files per
    split (as evenly as the rows allow): a multiple of a cluster's worker count lets each worker
    read only its own."""
    _check_options(out_dir, shard_size, encoding, shards)
    raw = read_data(cfg, mmap=True)
    # One little-endian dtype for both splits: TFRecord rows are decoded little-endian, and
    # IDX files (and some .npy files) are big-endian.
    dtype = raw.x_train.dtype if raw.x_test is None else np.result_type(raw.x_train.dtype, raw.x_test.dtype)
    dtype = dtype.newbyteorder("<")
    partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise RunError(f"{out_dir}: cannot create it ({exc.strerror or exc})") from None
    try:
        splits: dict[str, WrittenSplit] = {}
        for name, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
            if x is None:
                continue
            x = x[: cfg.limit] if cfg.limit else x
            y = None if y is None else np.asarray(y[: len(x)], np.int64)
            bounds = _bounds(len(x), shard_size or SHARD_ROWS, shards)
            splits[name] = _write_split(partial, name, x, y, bounds, encoding, dtype)
            say(f"{name}: {len(x):,} rows in {len(splits[name].shards)} shard(s)")
        manifest = {
            "format": FORMAT,
            "encoding": encoding,
            "row_shape": list(raw.x_train.shape[1:]),
            "dtype": dtype.str,
            "source": cfg.source,
            "label_names": raw.label_names,
            **({"layout": "sequences"} if raw.sequences else {}),
            "splits": {name: split.manifest_entry() for name, split in splits.items()},
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(partial, out_dir)
        out_dir = out_dir.resolve()
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise RunError(f"{out_dir}: writing the shards failed ({exc.strerror or exc}); nothing was kept") from None
    except BaseException:  # Ctrl-C included: no half-written folder is left behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return PrepareOutcome(
        out_dir,
        {name: split.rows for name, split in splits.items()},
        sum(len(split.shards) for split in splits.values()),
        sum(path.stat().st_size for path in out_dir.iterdir()),
    )


def _check_options(out_dir: Path, shard_size: int | None, encoding: str, shards: int | None) -> None:
    if shard_size is not None and shards is not None:
        raise ConfigError("--shard-size and --shards both say how to cut the files: give one")
    if encoding not in ENCODINGS:
        raise ConfigError(f"--format {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if shard_size is not None and shard_size < 1:
        raise ConfigError(f"--shard-size {shard_size}: expected a positive number of rows")
    if shards is not None and shards < 1:
        raise ConfigError(f"--shards {shards}: expected a positive number of files per split")
    if out_dir.exists():
        raise RunError(f"{out_dir}: already exists; prepare writes a new folder (choose another name)")


@dataclass
class WrittenSplit:
    shards: list[dict[str, str | int]]
    rows: int
    labels: str | None = None  # TFRecord: the split's labels file

    def manifest_entry(self) -> dict[str, object]:
        return {"shards": self.shards, **({"labels": self.labels} if self.labels else {})}


def _bounds(rows: int, shard_size: int, shards: int | None) -> list[int]:
    """Where each file's rows start, and the end: files of `shard_size` rows, or `shards` files
    whose sizes differ by at most one row (as many as there are rows, if fewer)."""
    if shards is None:
        return [*range(0, rows, shard_size), rows] if rows else [0, 0]
    count = max(1, min(shards, rows))
    return [rows * number // count for number in range(count + 1)]


def _write_split(
    folder: Path, name: str, x: np.ndarray, y: np.ndarray | None, bounds: list[int], encoding: str, dtype: np.dtype
) -> WrittenSplit:
    count = len(bounds) - 1
    shards: list[dict[str, str | int]] = []
    for number, (start, end) in enumerate(itertools.pairwise(bounds)):
        rows = np.ascontiguousarray(x[start:end], dtype=dtype)
        stem = f"{name}-{number:05d}-of-{count:05d}"
        if encoding == "npy":
            np.save(folder / f"{stem}.npy", rows)
            if y is not None:
                np.save(folder / f"{stem}{LABELS_SUFFIX}", y[start:end])
            shards.append({"file": f"{stem}.npy", "rows": len(rows)})
        else:
            _write_tfrecord(folder / f"{stem}.tfrecord", rows)
            shards.append({"file": f"{stem}.tfrecord", "rows": len(rows)})
    split = WrittenSplit(shards, len(x))
    if y is not None and encoding == "tfrecord":
        np.save(folder / f"{name}{LABELS_SUFFIX}", y)
        split.labels = f"{name}{LABELS_SUFFIX}"
    return split


def _write_tfrecord(path: Path, rows: np.ndarray) -> None:
    """One tf.train.Example per row, its raw bytes under "x" (shape and dtype are in the manifest)."""
    tf = import_tensorflow()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[row.tobytes()]))
            writer.write(tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString())
