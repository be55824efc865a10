"""Data sets larger than memory: folders of shards, read block by block and streamed to training.

A shard folder is what `aecli prepare` writes (TFRecord or .npy shards plus manifest.json), or
any folder of .npy files with the same row shape (labels, if any, in `<name>.labels.npy`
beside each). Rows are stored raw (uint8 images stay uint8, a quarter of float32) and scaled
on the fly.

Which rows are test, validation or training rows is decided by a hash of each row's index
(seeded by training.seed), not by a shuffled list: every pass over the data (scaling
statistics, training epochs, validation, the report, a later `aecli evaluate`) agrees on the
assignment without holding anything per row in memory. `.npy` shards are read with positioned
file reads rather than memory-mapped: mapped pages would count against the process's memory as
they are touched, and the point is that a 4 GB set trains in the memory of a small one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.backend import import_tensorflow
from aecli.config import BUILTIN_SOURCES, DataConfig
from aecli.data.arrays import Dataset, RawData, sample_shape_of
from aecli.data.labels import label_codes
from aecli.data.scaling import Scaling, fit_channel_scaling, scaling_from_ranges
from aecli.data.sharing import ReadCounter, WorkerShare
from aecli.data.source_kind import SourceKind, SourceRequest
from aecli.errors import ConfigError, DataError

MANIFEST = "manifest.json"
FORMAT = "aecli-shards/1"
LABELS_SUFFIX = ".labels.npy"
BLOCK_ROWS = 4096  # rows read per file access
SHUFFLE_BUFFER_BYTES = 64 * 2**20  # raw bytes of rows mixed across blocks while training
IN_MEMORY_LIMIT_BYTES = 2 * 2**30  # float32 bytes `materialize` agrees to build (evaluate, reconstruct)
_OWN_LABELS = (
    "data.source {source}: a shard folder carries its own labels (" + LABELS_SUFFIX + " files) and no ids; "
    "drop data.labels_path / data.label_column / data.id_column"
)
_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: consecutive indices spread evenly over [0, 1)


@dataclass(frozen=True)
class Shard:
    path: Path
    rows: int
    first: int  # index of its first row within its split
    offset: int = 0  # .npy: bytes before the data
    labels: Path | None = None  # .npy: its labels file


@dataclass(frozen=True)
class ShardSplit:
    shards: tuple[Shard, ...]
    rows: int
    labels: np.ndarray | None  # every label of the split (8 bytes a row), or None


@dataclass(frozen=True)
class ShardSet:
    root: Path
    encoding: str  # npy | tfrecord
    row_shape: tuple[int, ...]  # one stored row, e.g. (28, 28)
    dtype: np.dtype
    splits: dict[str, ShardSplit]  # "train", and "test" when the source had one
    label_names: list[str] | None = None
    sequences: bool = False  # rows are (steps, channels) sequences (series windows), not images

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return sample_shape_of(np.empty((0, *self.row_shape)), self.sequences)

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize


def is_shard_folder(path: Path) -> bool:
    """A folder with an aecli manifest, or one holding .npy files (IDX folders hold neither)."""
    if not path.is_dir():
        return False
    return (path / MANIFEST).exists() or any(child.suffix == ".npy" for child in path.iterdir())


def open_shards(root: Path) -> ShardSet:
    """Read the manifest (or scan the .npy files) and check every shard's header, not its rows."""
    if (root / MANIFEST).exists():
        return _open_manifest(root)
    return _open_npy_folder(root)


def _open_manifest(root: Path) -> ShardSet:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
        encoding = manifest["encoding"]
        row_shape = tuple(int(n) for n in manifest["row_shape"])
        dtype = np.dtype(manifest["dtype"])
        entries = {
            name: [(str(entry["file"]), int(entry["rows"])) for entry in split["shards"]]
            for name, split in manifest["splits"].items()
        }
        label_files = {name: split.get("labels") for name, split in manifest["splits"].items()}
        label_names = manifest.get("label_names")
        sequences = manifest.get("layout") == "sequences"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise DataError(f"{root / MANIFEST}: not an aecli shard manifest ({type(exc).__name__}: {exc})") from None
    if encoding not in ("npy", "tfrecord") or "train" not in entries or dtype.kind not in "biuf":
        raise DataError(
            f"{root / MANIFEST}: unsupported encoding {encoding!r}, dtype {dtype} or splits {list(entries)}"
        )
    splits = {}
    for name, shards in entries.items():
        for file, _ in shards:
            if not (root / file).is_file():
                raise DataError(f"{root}: shard {file} listed in {MANIFEST} is missing")
        if encoding == "npy":
            splits[name] = _npy_split(root, [root / file for file, _ in shards], row_shape, dtype)
            for shard, (_, rows) in zip(splits[name].shards, shards, strict=True):
                if shard.rows != rows:
                    raise DataError(f"{shard.path}: holds {shard.rows} rows, {MANIFEST} says {rows}")
            continue
        files, first = [], 0
        for file, rows in shards:
            files.append(Shard(root / file, rows, first))
            first += rows
        labels_file = label_files[name]
        labels = _read_labels_file(root / str(labels_file), first) if labels_file else None
        splits[name] = ShardSplit(tuple(files), first, labels)
    return ShardSet(root, encoding, row_shape, dtype, splits, label_names, sequences)


def _open_npy_folder(root: Path) -> ShardSet:
    files = sorted(p for p in root.iterdir() if p.suffix == ".npy" and not p.name.endswith(LABELS_SUFFIX))
    if not files:
        raise DataError(f"data.source: folder {root} holds only label files ({LABELS_SUFFIX}), no data shards")
    first = _npy_header(files[0])
    split = _npy_split(root, files, first[0][1:], first[1])
    return ShardSet(root, "npy", first[0][1:], first[1], {"train": split})


def _npy_split(root: Path, files: list[Path], row_shape: tuple[int, ...], dtype: np.dtype) -> ShardSplit:
    shards, labels, first = [], [], 0
    for path in files:
        shape, file_dtype, offset = _npy_header(path)
        if shape[1:] != row_shape or file_dtype != dtype:
            raise DataError(
                f"{path}: rows of shape {shape[1:]} ({file_dtype}); the other shards have {row_shape} ({dtype})"
            )
        label_path = path.with_name(path.name.removesuffix(".npy") + LABELS_SUFFIX)
        has_labels = label_path.exists()
        shards.append(Shard(path, shape[0], first, offset, label_path if has_labels else None))
        if has_labels:
            labels.append(_read_labels_file(label_path, shape[0]))
        first += shape[0]
    if labels and len(labels) != len(shards):
        raise DataError(f"{root}: some shards have {LABELS_SUFFIX} files and some do not")
    if dtype.kind not in "biuf":
        raise DataError(f"{root}: shards hold {dtype}, expected numbers")
    return ShardSplit(tuple(shards), first, np.concatenate(labels) if labels else None)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an .npy file, reading only its header."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
            offset = handle.tell()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy shard ({exc})") from None
    if fortran or dtype.hasobject or len(shape) < 2:
        raise DataError(f"{path}: expected a C-ordered numeric array of rows, got shape {shape} ({dtype})")
    expected = offset + math.prod(shape) * dtype.itemsize
    if path.stat().st_size < expected:
        raise DataError(f"{path}: truncated: its header promises {expected} bytes, the file has {path.stat().st_size}")
    return tuple(shape), dtype, offset


def _read_labels_file(path: Path, rows: int) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read labels ({exc})") from None
    if labels.ndim != 1 or len(labels) != rows or labels.dtype.kind not in "biu":
        raise DataError(f"{path}: expected {rows} integer labels, got shape {labels.shape} ({labels.dtype})")
    return labels.astype(np.int64)


def hash_position(index: np.ndarray, seed: int) -> np.ndarray:
    """A position in [0, 1) for each row index; the same in every pass and on every machine."""
    mixed = (index.astype(np.uint64) + np.uint64(seed)) * np.uint64(_HASH_MULTIPLIER)
    return (mixed % np.uint64(2**32)).astype(np.float64) / 2**32


@dataclass
class ShardedData:
    """A shard folder seen through a data config: which rows each part has, and their scaling.

    Parts are "train", "validation" and "test"; `blocks` reads a part's raw rows block by
    block, `batches` scaled ones, and feeds.Stream makes the tf.data pipeline that training consumes.
    """

    shards: ShardSet
    cfg: DataConfig
    seed: int
    scaling: Scaling = field(init=False)
    scaled_range: tuple[float, float] = (0.0, 1.0)
    counts: dict[str, int] = field(default_factory=dict)  # rows of each part, over every worker
    class_codes: list[int] | None = None  # data.classes as label codes (see data.label_codes)
    share: WorkerShare | None = None  # multi-worker training: this worker reads only its own files
    worker_counts: dict[str, list[int]] = field(default_factory=dict)  # with `share`: rows per worker
    sharing_note: str | None = None  # why a cluster's workers each read every file, when they do
    reads: ReadCounter = field(default_factory=ReadCounter)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shards.sample_shape

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3 and not self.shards.sequences

    @property
    def label_names(self) -> list[str] | None:
        return self.shards.label_names

    @property
    def labelled(self) -> bool:
        return self.shards.splits["train"].labels is not None

    @property
    def description(self) -> dict[str, Any]:
        return {
            "source": self.cfg.source,
            "source_has_test_split": "test" in self.shards.splits,
            "streamed": True,
            "encoding": self.shards.encoding,
        }

    def shapes(self) -> dict[str, Any]:
        return {
            "sample_shape": list(self.sample_shape),
            "train": self.counts["train"],
            "validation": self.counts["validation"],
            "test": self.counts["test"],
            "labelled": self.labelled,
        }

    def _source_split(self, part: str) -> str:
        return "test" if part == "test" and "test" in self.shards.splits else "train"

    def _keep(self, part: str, index: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Which of these rows (indices within their source split) belong to `part`."""
        keep = np.ones(len(index), bool) if self.cfg.limit is None else index < self.cfg.limit
        if part == "test" and "test" in self.shards.splits:
            return keep
        position = hash_position(index, self.seed)
        test = 0.0 if "test" in self.shards.splits else self.cfg.test_split
        validation_end = test + self.cfg.validation_split * (1 - test)
        if part == "test":
            return keep & (position < test)
        in_validation = (position >= test) & (position < validation_end)
        keep &= in_validation if part == "validation" else position >= validation_end
        if self.class_codes is not None and labels is not None:
            keep &= np.isin(labels, self.class_codes)
        return keep

    def count(self, part: str, files: tuple[Shard, ...] | None = None) -> int:
        """Rows in `part` (within `files`, by default all of its split's), from row indices (and
        labels) alone: no file is read."""
        split = self.shards.splits[self._source_split(part)]
        total = 0
        for shard in split.shards if files is None else files:
            for start in range(shard.first, shard.first + shard.rows, 1 << 20):
                index = np.arange(start, min(shard.first + shard.rows, start + (1 << 20)))
                labels = None if split.labels is None else split.labels[index]
                total += int(self._keep(part, index, labels).sum())
        return total

    def files(self, part: str) -> tuple[Shard, ...]:
        """The shard files this process reads for `part`: all, or under a share its own."""
        shards = self.shards.splits[self._source_split(part)].shards
        return shards if self.share is None else self.share.own(shards)

    def reading(self) -> dict[str, int]:
        """What this process has read so far, next to the folder's size in files."""
        return self.reads.to_dict(sum(len(split.shards) for split in self.shards.splits.values()))

    def blocks(
        self, part: str, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Raw rows of `part` and their labels, a block at a time; `rng` shuffles the block order
        (.npy) or the shard order (TFRecord) and the rows within each block."""
        for rows, labels, _ in self.indexed_blocks(part, rng):
            yield rows, labels

    def indexed_blocks(
        self, part: str, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """`blocks`, with each row's position in its source split (the folder's train or test shards)."""
        split = self.shards.splits[self._source_split(part)]
        reader = _npy_blocks if self.shards.encoding == "npy" else _tfrecord_blocks
        limit = self.cfg.limit  # files wholly past data.limit hold no kept row: not read at all
        files = tuple(shard for shard in self.files(part) if limit is None or shard.first < limit)
        for first, rows in reader(self.shards, files, rng, self.reads):
            index = np.arange(first, first + len(rows))
            labels = None if split.labels is None else split.labels[first : first + len(rows)]
            keep = self._keep(part, index, labels)
            if not keep.any():
                continue
            rows, labels, index = rows[keep], None if labels is None else labels[keep], index[keep]
            if rng is not None:
                order = rng.permutation(len(rows))
                rows, labels, index = rows[order], None if labels is None else labels[order], index[order]
            yield rows, labels, index

    def scale(self, rows: np.ndarray) -> np.ndarray:
        return self.scaling.apply(rows.reshape((len(rows), *self.sample_shape)))

    def batches(self, part: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Scaled float32 batches of `part` in stored order, with labels and source rows, for reports."""
        pending: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = []
        held = 0
        for block in self.indexed_blocks(part):
            pending.append(block)
            held += len(block[0])
            if held >= batch_size:
                yield self._joined(pending)
                pending, held = [], 0
        if pending:
            yield self._joined(pending)

    def _joined(
        self, parts: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        rows = np.concatenate([p[0] for p in parts])
        labels = None if parts[0][1] is None else np.concatenate([p[1] for p in parts if p[1] is not None])
        return self.scale(rows), labels, np.concatenate([p[2] for p in parts])

    def materialize(self, parts: tuple[str, ...] = ("train", "validation", "test")) -> Dataset:
        """These parts in memory (the others empty), for commands that need arrays (evaluate,
        reconstruct); refused when their float32 copy would exceed IN_MEMORY_LIMIT_BYTES."""
        rows = sum(self.counts[part] for part in parts)
        needed = rows * math.prod(self.sample_shape) * 4
        if needed > IN_MEMORY_LIMIT_BYTES:
            raise DataError(
                f"data.source {self.cfg.source}: the {' and '.join(parts)} rows ({rows:,}) need "
                f"{needed / 2**30:.1f} GiB as float32; evaluate a part of the folder instead with "
                f"--data {self.cfg.source} --set data.limit=N (the first N rows of each of its splits)"
            )
        arrays = {}
        source_rows = {}
        for part in ("train", "validation", "test"):
            batches = list(self.batches(part, 65536)) if part in parts else []
            x = np.concatenate([b[0] for b in batches]) if batches else np.empty((0, *self.sample_shape), np.float32)
            y = np.concatenate([b[1] for b in batches]) if batches and batches[0][1] is not None else None
            arrays[part] = (x, y)
            source_rows[part] = np.concatenate([b[2] for b in batches]) if batches else np.empty(0, np.int64)
        return Dataset(
            x_train=arrays["train"][0],
            y_train=arrays["train"][1],
            x_val=arrays["validation"][0] if self.counts["validation"] else None,
            y_val=arrays["validation"][1] if self.counts["validation"] else None,
            x_test=arrays["test"][0],
            y_test=arrays["test"][1],
            sample_shape=self.sample_shape,
            is_image=self.is_image,
            scaling=self.scaling,
            label_names=self.label_names,
            description=self.description,
            source_rows=source_rows,
        )


def _npy_blocks(
    shards: ShardSet, files: tuple[Shard, ...], rng: np.random.Generator | None, reads: ReadCounter | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    spans = [(shard, start) for shard in files for start in range(0, shard.rows, BLOCK_ROWS)]
    if rng is not None:
        spans = [spans[i] for i in rng.permutation(len(spans))]
    for shard, start in spans:
        count = min(BLOCK_ROWS, shard.rows - start)
        try:  # opened per block: thousands of shards never exhaust file descriptors
            with shard.path.open("rb") as handle:
                handle.seek(shard.offset + start * shards.row_bytes)
                buffer = handle.read(count * shards.row_bytes)
        except OSError as exc:
            raise DataError(f"{shard.path}: cannot read it ({exc.strerror or exc})") from None
        if len(buffer) != count * shards.row_bytes:
            raise DataError(f"{shard.path}: shorter than its header says (truncated while in use?)")
        if reads is not None:
            reads.add(shard.path.name, count, len(buffer))
        yield shard.first + start, np.frombuffer(buffer, shards.dtype).reshape((count, *shards.row_shape))


def _tfrecord_blocks(
    shards: ShardSet,
    files: tuple[Shard, ...],
    rng: np.random.Generator | None,
    reads: ReadCounter | None = None,
    limit: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    tf = import_tensorflow()
    order = list(range(len(files))) if rng is None else list(rng.permutation(len(files)))
    spec = {"x": tf.io.FixedLenFeature([], tf.string)}
    for position in order:
        shard = files[position]
        records = tf.data.TFRecordDataset(str(shard.path))
        records = (records if limit is None else records.take(limit)).batch(BLOCK_ROWS)
        first = shard.first
        try:
            for block in records:
                parsed = tf.io.parse_example(block, spec)["x"]
                rows = tf.reshape(tf.io.decode_raw(parsed, tf.as_dtype(shards.dtype)), (-1, *shards.row_shape))
                if first + int(rows.shape[0]) > shard.first + shard.rows:
                    raise DataError(f"{shard.path}: holds more rows than the {shard.rows} its manifest lists")
                if reads is not None:  # payload bytes, as for .npy shards (records add a few bytes each)
                    reads.add(shard.path.name, int(rows.shape[0]), int(rows.shape[0]) * shards.row_bytes)
                yield first, rows.numpy()
                first += int(rows.shape[0])
        except tf.errors.OpError as exc:
            reason = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", exc.message.splitlines()[0]).strip()
            raise DataError(f"{shard.path}: cannot read it as TFRecord shards ({reason})") from None
        if limit is None and first != shard.first + shard.rows:
            raise DataError(f"{shard.path}: holds {first - shard.first} rows, its manifest says {shard.rows}")


def open_sharded(cfg: DataConfig, seed: int, share: WorkerShare | None = None) -> ShardedData:
    """Open a shard folder for `cfg`: count each part's rows and fit the scaling in one
    streaming pass over the training rows (which also checks them for NaN and inf).

    With `share` (a multi-worker cluster), this worker reads only its own files when every
    worker's files hold training (and validation) rows; the scaling statistics are then combined
    over the workers. Otherwise every worker reads every file, and `sharing_note` says why."""
    shards = open_shards(Path(cfg.source))
    if cfg.labels_path is not None or cfg.label_column is not None or cfg.id_column is not None:
        raise DataError(_OWN_LABELS.format(source=cfg.source))
    if cfg.classes is not None and shards.splits["train"].labels is None:
        raise DataError("data.classes: the source has no labels to filter on")
    data = ShardedData(shards, cfg, seed)
    if cfg.classes is not None:
        data.class_codes = label_codes(cfg.classes, shards.label_names, "data.classes")
    data.counts = {part: data.count(part) for part in ("train", "validation", "test")}
    check_parts_hold_rows(cfg, data.counts, own_test="test" in shards.splits)
    if share is not None:
        _share_files(data, share)
    # uint8 images scaled /255: nothing to learn or check, no pass over the rows
    fixed = shards.dtype == np.uint8 and cfg.scaling == "auto" and not shards.sequences
    low, high = _checked_ranges(data, with_ranges=not fixed)
    if fixed:
        data.scaling = scaling_from_ranges(cfg.scaling, np.zeros(1), np.ones(1), shards.dtype, data.is_image)
        return data
    if shards.sequences:  # per channel, as in memory
        if cfg.scaling in ("zscore", "zscore_global", "robust"):
            raise DataError(
                f"data.scaling {cfg.scaling}: not available for streamed shard folders (use minmax or global)"
            )
        channels = data.sample_shape[-1]
        low, high = low.reshape(-1, channels).min(axis=0), high.reshape(-1, channels).max(axis=0)
        data.scaling = fit_channel_scaling(np.stack([low, high]), cfg.scaling, default="minmax")
    else:
        data.scaling = scaling_from_ranges(cfg.scaling, low, high, shards.dtype, data.is_image)
    scaled = data.scaling.apply(np.stack([low, high]).astype(np.float32))
    data.scaled_range = (float(scaled.min()), float(scaled.max()))
    return data


def check_parts_hold_rows(cfg: DataConfig, counts: dict[str, int], own_test: bool = False) -> None:
    """Every part training uses holds rows (streamed data counts them before training starts)."""
    for part, fix in (
        ("train", "lower the split fractions or widen data.classes / data.limit"),
        ("validation", "raise data.validation_split or data.limit, or set it to 0"),
        ("test", "the folder's test shards hold no rows" if own_test else "raise data.test_split or data.limit"),
    ):
        if counts[part] == 0 and (part != "validation" or cfg.validation_split > 0):
            raise DataError(f"data.source {cfg.source}: the {part} split is empty; {fix}")


def _share_files(data: ShardedData, share: WorkerShare) -> None:
    """Give this worker its own files, if every worker's files hold rows of each part it trains
    on (a worker with none would have no batches to contribute to a collective step)."""
    train_files = data.shards.splits["train"].shards
    workers = range(share.count)
    counts = {
        part: [data.count(part, share.own(train_files, worker)) for worker in workers]
        for part in ("train", "validation")
    }
    if len(train_files) < share.count:
        data.sharing_note = (
            f"the folder has {len(train_files)} training shard file(s) for {share.count} workers, so every "
            f"worker reads all of them and keeps every {share.count}-th batch; prepare it with "
            f"--shards {share.count} (or a multiple) for each worker to read only its own files"
        )
    elif empty := [
        worker
        for worker in workers
        if counts["train"][worker] == 0 or (data.cfg.validation_split > 0 and counts["validation"][worker] == 0)
    ]:
        data.sharing_note = (
            f"{share.name(empty[0])}'s shard files hold no training or validation rows (data.limit, data.classes or "
            "small files), so every worker reads all files and keeps every n-th batch"
        )
    else:
        data.share, data.worker_counts = share, counts


def _checked_ranges(data: ShardedData, with_ranges: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check the files this process reads (a TFRecord shard's first record; NaN and inf in
    every part) and, `with_ranges`, the training rows' per-feature minimum and maximum.

    Under a share every worker checks its own files, then all of them exchange the outcome (and
    their ranges): a problem in one worker's files stops every worker with the reason, instead
    of leaving the others waiting in the next collective for a worker that has gone."""
    features = math.prod(data.shards.row_shape) if with_ranges else 0
    low, high = np.full(features, np.inf), np.full(features, -np.inf)
    try:
        if data.shards.encoding == "tfrecord":
            _check_first_records(data.shards, data.share)
        if with_ranges:
            low, high = _local_ranges(data)
    except DataError as exc:
        if data.share is None:
            raise
        problem: DataError | None = exc  # raised after the exchange, which every worker must join
    else:
        problem = None
    if data.share is None:
        return low, high
    summary = data.share.gather(np.concatenate([low, high, [0.0 if problem is None else 1.0]])[None])
    if problem is not None:
        raise problem
    if summary[:, -1].any():
        worker = data.share.name(int(np.flatnonzero(summary[:, -1])[0]))
        raise DataError(f"data.source {data.cfg.source}: {worker}'s shard files are damaged or hold NaN or inf")
    return summary[:, :features].min(axis=0), summary[:, features:-1].max(axis=0)


def _local_ranges(data: ShardedData) -> tuple[np.ndarray, np.ndarray]:
    cfg, shards = data.cfg, data.shards
    features = math.prod(shards.row_shape)
    low, high = np.full(features, np.inf), np.full(features, -np.inf)
    for rows, _ in data.blocks("train"):
        flat = rows.reshape(len(rows), -1)
        _check_finite(flat, cfg.source, "training")
        low, high = np.minimum(low, flat.min(axis=0)), np.maximum(high, flat.max(axis=0))
    if shards.dtype.kind == "f":  # like in-memory data, no split may hold NaN or inf
        for part in ("validation", "test"):
            for rows, _ in data.blocks(part):
                _check_finite(rows.reshape(len(rows), -1), cfg.source, part)
    return low, high


def _check_first_records(shards: ShardSet, share: WorkerShare | None = None) -> None:
    """Read one record of every TFRecord shard (of this worker's, under a share): a file that is
    not one fails here, before a run starts (damage further in is found while streaming, and
    also named)."""
    for split in shards.splits.values():
        for shard in split.shards if share is None else share.own(split.shards):
            first = next(_tfrecord_blocks(shards, (shard,), None, limit=1), None)
            if first is None and shard.rows:
                raise DataError(f"{shard.path}: holds no rows, its manifest says {shard.rows}")


def _check_finite(flat: np.ndarray, source: str, part: str) -> None:
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise DataError(f"data.source {source}: {part} rows hold NaN or inf; clean or drop them")


def read_shards_into_memory(root: Path, limit: int | None = None) -> RawData:
    """The rows of a shard folder (the first `limit` of each split), for sources given to
    evaluate/reconstruct; refused when their float32 copy would exceed IN_MEMORY_LIMIT_BYTES."""
    shards = open_shards(root)
    rows = sum(min(split.rows, limit or split.rows) for split in shards.splits.values())
    needed = rows * math.prod(shards.row_shape) * 4
    if needed > IN_MEMORY_LIMIT_BYTES:
        raise DataError(
            f"{root}: {rows:,} rows need {needed / 2**30:.1f} GiB as float32; add --set data.limit=N "
            f"to read the first N rows of each split"
        )
    reader = _npy_blocks if shards.encoding == "npy" else _tfrecord_blocks

    def whole(name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        split = shards.splits.get(name)
        if split is None or split.rows == 0:
            return None, None
        wanted = min(split.rows, limit or split.rows)
        blocks = []
        for first, block in reader(shards, split.shards, None):
            if first >= wanted:
                break
            blocks.append(block[: wanted - first])
        return np.concatenate(blocks), None if split.labels is None else split.labels[:wanted]

    x_train, y_train = whole("train")
    x_test, y_test = whole("test")
    if x_train is None:
        raise DataError(f"{root}: the folder holds no training rows")
    return RawData(x_train, y_train, x_test, y_test, shards.label_names, sequences=shards.sequences)


def check_streamable(optimizer_name: str) -> None:
    if optimizer_name == "gd":
        raise ConfigError(
            "optimizer.name: gd takes the whole training set as one batch, which streamed data (a shard folder, "
            "a large text file) never holds in memory; use sgd with a large training.batch_size"
        )


def _read_into_memory(request: SourceRequest) -> RawData:
    if request.labels_path is not None or request.label_column is not None or request.id_column is not None:
        raise DataError(_OWN_LABELS.format(source=request.source))
    return read_shards_into_memory(Path(request.source), request.limit)


def _sample_shape(request: SourceRequest) -> tuple[int, ...]:
    return open_shards(Path(request.source)).sample_shape


SOURCE_KIND = SourceKind(
    "shard folder",
    claims=lambda request: request.source not in BUILTIN_SOURCES and is_shard_folder(Path(request.source)),
    read=_read_into_memory,
    stream=open_sharded,
    sample_shape=_sample_shape,
)
