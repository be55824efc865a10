"""Load a data source into validated float32 arrays, split it and scale it to [0, 1].

Only numpy and the standard library are imported at module level: `aecli validate` reads
shapes through here without TensorFlow. scikit-learn and keras.datasets load on demand.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from aecli.config import BUILTIN_SOURCES, DataConfig
from aecli.errors import DataError, clip, shorten

# IDX type codes (http://yann.lecun.com/exdb/mnist/ layout), all big-endian.
IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
KNOWN_SHAPES: dict[str, tuple[int, ...]] = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1)}
# Keras's cache file per downloadable source, named in the offline error.
KERAS_ARCHIVES = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist (4 IDX .gz files)"}


@dataclass(frozen=True)
class RawData:
    """What a source holds, before splitting and scaling."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    label_names: list[str] | None = None
    ids_train: np.ndarray | None = None  # data.id_column's values, as written (strings)
    ids_test: np.ndarray | None = None


TENSOR_ALIGNMENT = 64  # bytes: TensorFlow's CPU kernels read buffers aligned like this


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on a TENSOR_ALIGNMENT boundary, so
    that the training pipeline can hand it to TensorFlow without a copy."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


@dataclass(frozen=True)
class Scaling:
    """x_scaled = (x - offset) / scale; offset/scale are scalars or per-feature arrays."""

    kind: str
    offset: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Scaled float32 rows in a buffer TensorFlow can use without copying (see aligned_empty)."""
        out = aligned_empty(x.shape, np.dtype(np.float32))
        offset, scale = self._shaped(x)
        with np.errstate(over="ignore", invalid="ignore"):
            np.subtract(x, offset, out=out, casting="unsafe")
            np.divide(out, scale, out=out, casting="unsafe")
        if not np.isfinite(out).all():
            raise DataError(
                "values beyond float32's range (about ±3.4e38) after scaling; rescale the data (or drop the rows)"
            )
        return out

    def invert(self, x: np.ndarray) -> np.ndarray:
        offset, scale = self._shaped(x)
        return x * scale + offset

    def _shaped(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature statistics (minmax) are stored flat; images need them in their own shape."""
        if self.offset.ndim == 1 and x.ndim > 2:
            return self.offset.reshape(x.shape[1:]), self.scale.reshape(x.shape[1:])
        return self.offset, self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaling:
        return cls(data["kind"], np.asarray(data["offset"], np.float64), np.asarray(data["scale"], np.float64))


@dataclass
class Dataset:
    """Scaled float32 splits, each of shape (n, *sample_shape); labels are int arrays or None."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    sample_shape: tuple[int, ...]
    is_image: bool
    scaling: Scaling
    label_names: list[str] | None = None
    description: dict[str, Any] = field(default_factory=dict)
    # Per split ("train", "validation", "test"): each row's position in the source it came from
    # (the file, or the source's own test set), and its data.id_column value when there is one.
    source_rows: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, np.ndarray] = field(default_factory=dict)

    def origin(self, split: str) -> dict[str, np.ndarray]:
        """Per-sample columns saying where each row of `split` came from: source_row, and id."""
        return _origin_columns(self.source_rows.get(split), self.ids.get(split))

    def shapes(self) -> dict[str, Any]:
        return {
            "sample_shape": list(self.sample_shape),
            "train": len(self.x_train),
            "validation": 0 if self.x_val is None else len(self.x_val),
            "test": len(self.x_test),
            "labelled": self.y_train is not None,
        }


def load_dataset(cfg: DataConfig, seed: int, test_only: bool = False) -> Dataset:
    """Read `cfg.source`, split off test/validation rows (seeded), filter classes and scale.

    `test_only`: the caller reads only the test split; a shard folder then loads nothing else.
    """
    if is_shard_source(cfg.source):
        from aecli.shards import open_sharded

        # The same rows per split as streamed training saw.
        return open_sharded(cfg, seed).materialize(("test",) if test_only else ("train", "validation", "test"))
    raw = read_source(cfg.source, labels_path=cfg.labels_path, label_column=cfg.label_column, id_column=cfg.id_column)
    rng = np.random.default_rng(seed)
    pool = _Rows.of(raw.x_train, raw.y_train, raw.ids_train).first(cfg.limit)
    if raw.x_test is None:
        if len(pool.x) < 3:
            raise DataError(f"data.source {cfg.source}: {len(pool.x)} rows are too few to split off a test set")
        pool, test = pool.split(cfg.test_split, rng)
    else:
        test = _Rows.of(raw.x_test, raw.y_test, raw.ids_test).first(cfg.limit)
    if cfg.classes is not None:
        pool = pool.where(_class_mask(pool.y, cfg.classes, raw.label_names))
    validation: _Rows | None = None
    if cfg.validation_split > 0:
        if len(pool.x) < 2:
            raise DataError(f"data.validation_split: {len(pool.x)} training row(s) cannot be split further")
        pool, validation = pool.split(cfg.validation_split, rng)

    sample_shape = sample_shape_of(pool.x)
    is_image = len(sample_shape) == 3
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
        description={"source": cfg.source, "source_has_test_split": raw.x_test is not None},
        source_rows={name: rows.positions for name, rows in splits.items()},
        ids={name: rows.ids for name, rows in splits.items() if rows.ids is not None},
    )


@dataclass(frozen=True)
class _Rows:
    """Rows of one source split on their way to a Dataset split, with where each came from."""

    x: np.ndarray
    y: np.ndarray | None
    positions: np.ndarray  # each row's position in the source split
    ids: np.ndarray | None

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray | None, ids: np.ndarray | None) -> _Rows:
        return cls(x, None if y is None else y.astype(np.int64), np.arange(len(x)), ids)

    def first(self, limit: int | None) -> _Rows:
        return self if limit is None else self.where(slice(0, limit))

    def where(self, keep: Any) -> _Rows:
        return _Rows(
            self.x[keep],
            None if self.y is None else self.y[keep],
            self.positions[keep],
            None if self.ids is None else self.ids[keep],
        )

    def split(self, fraction: float, rng: np.random.Generator) -> tuple[_Rows, _Rows]:
        """Shuffle, then hold out `fraction` of the rows (at least one, never all): (kept, held)."""
        order = rng.permutation(len(self.x))
        n_held = min(max(1, round(fraction * len(self.x))), len(self.x) - 1)
        return self.where(order[n_held:]), self.where(order[:n_held])


@dataclass(frozen=True)
class Samples:
    """Rows of a source read for a trained model (evaluate, reconstruct), with where each came from."""

    x: np.ndarray
    y: np.ndarray | None
    label_names: list[str] | None
    source_rows: np.ndarray  # position in the source's train set, then in its test set
    ids: np.ndarray | None
    limited: bool  # data.limit cut at least one of the source's sets

    def origin(self) -> dict[str, np.ndarray]:
        """Per-sample columns saying where each row came from: source_row, and id."""
        return _origin_columns(self.source_rows, self.ids)


def _origin_columns(source_rows: np.ndarray | None, ids: np.ndarray | None) -> dict[str, np.ndarray]:
    columns = {} if source_rows is None else {"source_row": source_rows}
    return columns if ids is None else {**columns, "id": ids}


def load_for_model(cfg: DataConfig, sample_shape: tuple[int, ...], scaling: Scaling) -> Samples:
    """Every row of `cfg.source` (its train and test sets, each capped at `cfg.limit`), shaped and
    scaled for a trained model: used to evaluate or reconstruct data the run did not train on."""
    raw = read_source(
        cfg.source, labels_path=cfg.labels_path, label_column=cfg.label_column, id_column=cfg.id_column, limit=cfg.limit
    )
    parts = [_Rows.of(raw.x_train, raw.y_train, raw.ids_train).first(cfg.limit)]
    if raw.x_test is not None:
        parts.append(_Rows.of(raw.x_test, raw.y_test, raw.ids_test).first(cfg.limit))
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


def fit_to_model(x: np.ndarray, sample_shape: tuple[int, ...], scaling: Scaling, what: str) -> np.ndarray:
    """Shape raw samples as the model's input and apply the run's saved scaling.

    The samples must have the model's shape (a missing or extra channel axis of size 1 aside),
    or be flat rows of its size (an image flattened into a CSV row); anything else with the same
    number of values (14x56 for 28x28) is a different layout, and refused.
    """
    given = tuple(x.shape[1:])
    squeezed = tuple(size for size in given if size != 1)
    fits = squeezed == tuple(size for size in sample_shape if size != 1) or (
        len(given) == 1 and given[0] == math.prod(sample_shape)
    )
    if not fits:
        raise DataError(f"{what}: samples have shape {given}, but the model expects {sample_shape}")
    return scaling.apply(x.reshape((len(x), *sample_shape)))


def peek_sample_shape(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one sample, read cheaply (no TensorFlow, no scikit-learn) for `aecli validate`."""
    if cfg.source in KNOWN_SHAPES:
        return KNOWN_SHAPES[cfg.source]
    if is_shard_source(cfg.source):
        from aecli.shards import open_shards

        return sample_shape_of(np.empty((0, *open_shards(Path(cfg.source)).row_shape)))
    raw = read_source(cfg.source, labels_path=cfg.labels_path, label_column=cfg.label_column, id_column=cfg.id_column)
    return sample_shape_of(raw.x_train)


def sample_shape_of(x: np.ndarray) -> tuple[int, ...]:
    """(features,) for tabular data, (height, width, channels) for images."""
    if x.ndim == 2:
        return (x.shape[1],)
    if x.ndim == 3:
        return (x.shape[1], x.shape[2], 1)
    return tuple(x.shape[1:])


def read_source(
    source: str,
    labels_path: Path | None = None,
    label_column: str | int | None = None,
    mmap: bool = False,
    limit: int | None = None,
    id_column: str | int | None = None,
) -> RawData:
    """Read any supported source into raw arrays, validated but not yet split or scaled.

    `mmap` opens an .npy source memory-mapped (for `aecli prepare`, which reads it once in order);
    `limit` lets a shard folder read only the rows that will be used (callers still apply it).
    """
    if source == "digits":
        raw = _read_digits()
    elif source in ("mnist", "fashion_mnist"):
        raw = _read_keras_dataset(source)
    else:
        raw = _read_path(Path(source), labels_path, (label_column, id_column), mmap, limit)
    _validate(raw, source)
    return raw


def _read_digits() -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return RawData(digits.images.astype(np.float32), digits.target.astype(np.int64), None, None)


def _read_keras_dataset(name: str) -> RawData:
    from aecli.backend import import_tensorflow

    import_tensorflow()
    import keras

    loader = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as exc:  # keras reports a failed download as a bare Exception
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"data.source {name}: could not download it ({reason}); offline, copy {KERAS_ARCHIVES[name]} into "
            f"~/.keras/datasets/, or point at local files: --set data.source=path/to/train-images-idx3-ubyte.gz "
            f"(labels found beside it), a folder of the IDX files, or an .npz with x_train/y_train/x_test/y_test"
        ) from None
    return RawData(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))


def _read_path(
    path: Path,
    labels_path: Path | None,
    columns: tuple[str | int | None, str | int | None],
    mmap: bool = False,
    limit: int | None = None,
) -> RawData:
    """`columns`: the CSV label and id columns."""
    if not path.exists():
        hint = f" (built-in sources: {', '.join(BUILTIN_SOURCES)})" if "/" not in str(path) else ""
        raise DataError(f"data.source: no such file or folder: {path}{hint}")
    for key, column in zip(("label_column", "id_column"), columns, strict=True):
        if column is not None and path.suffix.lower() != ".csv":
            raise DataError(f"data.{key}: applies to .csv sources only, not {path.name}")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"data.source: {path} is not a regular file or folder")
    if is_shard_source(str(path)):
        from aecli.shards import read_shards_into_memory

        return read_shards_into_memory(path, limit)
    if path.is_dir():
        return _read_idx_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".npy":
        return RawData(_read_npy(path, mmap), _read_labels(labels_path), None, None)
    if suffix == ".csv":
        return _read_csv(path, *columns)
    if _looks_like_idx(path):
        labels = _read_labels(labels_path) if labels_path else _read_sibling_idx_labels(path)
        return RawData(read_idx(path), labels, None, None)
    raise DataError(f"data.source: unsupported file {path.name}; expected an IDX file (.gz or raw), .npz, .npy or .csv")


def with_absolute_paths(cfg: DataConfig) -> DataConfig:
    """`cfg` with a relative source (and labels) path made absolute, when it names a file here."""
    update: dict[str, Any] = {}
    if cfg.source not in BUILTIN_SOURCES and Path(cfg.source).exists():
        update["source"] = str(Path(cfg.source).resolve())
    if cfg.labels_path is not None and cfg.labels_path.exists():
        update["labels_path"] = cfg.labels_path.resolve()
    return cfg.model_copy(update=update)


def is_shard_source(source: str) -> bool:
    """A folder of shards (`aecli prepare` output, or .npy files), streamed rather than loaded."""
    from aecli.shards import is_shard_folder

    return source not in BUILTIN_SOURCES and is_shard_folder(Path(source))


def _looks_like_idx(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".gz") or "idx" in name or "ubyte" in name or path.suffix.lower() == ".idx"


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (raw or gzip), checking the magic number and the promised size.

    The header is read first and the payload is read only up to what it promises (plus one
    byte, to notice more), so neither a lying header nor a gzip bomb makes it read without bound."""
    kind = "gzip" if path.name.lower().endswith(".gz") else "IDX"
    try:
        with (gzip.open if kind == "gzip" else open)(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES or magic[3] == 0:
                raise DataError(f"{path}: not an IDX file (bad magic number 0x{magic.hex() or 'empty'})")
            ndim = magic[3]
            raw_dims = handle.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: corrupt IDX header ({ndim} dimensions, {4 + len(raw_dims)} bytes)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            dtype = np.dtype(IDX_DTYPES[magic[2]])
            expected = math.prod(dims) * dtype.itemsize
            if expected > memory_bytes() // 2:
                raise DataError(
                    f"{path}: its header promises shape {shorten(dims)} ({_bytes(expected)}), more than half of this "
                    "machine's memory; a corrupt header, or data for `aecli prepare` from .npy files"
                )
            data = handle.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read it as {kind} ({clip(str(exc))})") from None
    if len(data) != expected:
        raise DataError(
            f"{path}: truncated or corrupt IDX: its header promises shape {shorten(dims)} ({_bytes(expected)}), "
            f"but {'more' if len(data) > expected else f'{len(data):,}'} bytes follow"
        )
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _bytes(count: int) -> str:
    """A byte count for a message: exact when readable, in scientific notation when absurd."""
    return f"{count:,} bytes" if count < 10**15 else f"about 10^{len(str(count)) - 1} bytes"


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _read_sibling_idx_labels(images: Path) -> np.ndarray | None:
    """The labels file beside an IDX images file, compressed or not whatever the images are."""
    name = images.name
    for swapped in (name.replace("images-idx3", "labels-idx1"), name.replace("-images-", "-labels-")):
        if swapped == name:
            continue
        stem = swapped.removesuffix(".gz").removesuffix(".GZ")
        for candidate in (swapped, stem, f"{stem}.gz"):
            if (images.parent / candidate).is_file():
                return read_idx(images.parent / candidate)
    return None


def _read_idx_folder(folder: Path) -> RawData:
    images = sorted(p for p in folder.iterdir() if "images-idx3" in p.name)
    train = [p for p in images if p.name.startswith("train")]
    test = [p for p in images if p.name.startswith("t10k") or p.name.startswith("test")]
    if not images:
        raise DataError(f"data.source: folder {folder} holds no IDX image files (*-images-idx3-ubyte[.gz])")
    if train and test:
        return RawData(
            read_idx(train[0]), _read_sibling_idx_labels(train[0]), read_idx(test[0]), _read_sibling_idx_labels(test[0])
        )
    only = (train or test or images)[0]
    return RawData(read_idx(only), _read_sibling_idx_labels(only), None, None)


# What numpy's and zipfile's readers raise on damaged or hostile files (a header is parsed
# with ast.literal_eval, hence the syntax errors).
_ARRAY_FILE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    TypeError,
    SyntaxError,
    tokenize.TokenError,
    RecursionError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,  # zipfile: an encrypted member
    NotImplementedError,  # zipfile: an unknown compression method
)


def _read_npz(path: Path) -> RawData:
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    raise DataError(f"{path}: holds {shorten(member.filename)}, which is not a .npy array")
                with archive.open(member) as stream:
                    _check_npy_header(stream, member.file_size, f"{path}: {member.filename}")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except _ARRAY_FILE_ERRORS as exc:
        raise DataError(f"{path}: cannot read it as .npz ({clip(_first_line(exc))})") from None
    if "x_train" in arrays:
        return RawData(arrays["x_train"], arrays.get("y_train"), arrays.get("x_test"), arrays.get("y_test"))
    if "x" in arrays:
        return RawData(arrays["x"], arrays.get("y"), None, None)
    found = clip(", ".join(arrays)) or "nothing"
    raise DataError(f"{path}: expected arrays x_train/y_train/x_test/y_test or x/y, found {found}")


def _read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        with path.open("rb") as handle:
            _check_npy_header(handle, path.stat().st_size, str(path))
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except _ARRAY_FILE_ERRORS as exc:
        raise DataError(f"{path}: cannot read it as .npy ({clip(_first_line(exc))})") from None


def _check_npy_header(stream: Any, size: int, where: str) -> None:
    """Check what a .npy header promises against the bytes that follow it, before numpy
    allocates or maps it: a 10-byte file may claim a shape of 2^31 x 10^9."""
    version = npy_format.read_magic(stream)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects, which are refused (they load by unpickling code)")
    if dtype.itemsize == 0 or any(not isinstance(n, int) or n < 0 for n in shape):
        raise DataError(f"{where}: a corrupt .npy header (dtype {dtype}, shape {shorten(shape)})")
    promised = math.prod(shape) * dtype.itemsize
    if promised != size - stream.tell():
        raise DataError(
            f"{where}: truncated or corrupt .npy: its header promises shape {shorten(shape)} ({_bytes(promised)}), "
            f"but {size - stream.tell():,} bytes follow"
        )


def _read_labels(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    if not path.exists():
        raise DataError(f"data.labels_path: no such file: {path}")
    return _read_npy(path) if path.suffix.lower() == ".npy" else read_idx(path)


def _read_csv(path: Path, label_column: str | int | None, id_column: str | int | None = None) -> RawData:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's BOM is not a name
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as CSV ({_first_line(exc)})") from None
    if not rows:
        raise DataError(f"{path}: the CSV file has no rows")
    header = rows[0] if not all(_is_number(cell) for cell in rows[0]) else None
    body = rows[1:] if header else rows
    if not body:
        raise DataError(f"{path}: the CSV file has a header but no data rows")
    first_line = 2 if header else 1
    width = len(body[0])
    if header is not None and len(header) != width:
        raise DataError(f"{path}: the header has {len(header)} columns, but line 2 has {width}")
    for number, row in enumerate(body, start=first_line):
        if len(row) != width:
            raise DataError(f"{path}: line {number} has {len(row)} columns, expected {width}")
    label_index = _column_index(path, header, width, label_column, "label_column")
    id_index = _column_index(path, header, width, id_column, "id_column")
    if label_index is not None and label_index == id_index:
        raise DataError(f"data.id_column: the same column as data.label_column in {path}")
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    if label_index is not None:
        label_cells = [row[label_index].strip() for row in body]
        if "" in label_cells:
            line = label_cells.index("") + first_line
            raise DataError(
                f"{path}: line {line} has an empty label (column {label_index + 1}); fill it or drop the row"
            )
        labels, label_names = _encode_labels(label_cells)
    ids = None if id_index is None else np.array([row[id_index].strip() for row in body])
    dropped = {index for index in (label_index, id_index) if index is not None}
    kept = [index for index in range(width) if index not in dropped]
    body = [[row[index] for index in kept] for row in body] if dropped else body
    if not kept:
        raise DataError(f"{path}: no feature columns left besides the label and id columns")
    try:
        x = np.array(body, dtype=np.float64)
    except ValueError:
        line, column = _first_non_number(body)
        name = f" ({header[kept[column]]})" if header else ""
        raise DataError(
            f"{path}: line {line + first_line}, column {kept[column] + 1}{name} is not a number: "
            f"{shorten(body[line][column])}"
            + ("" if label_index is not None else " (set data.label_column for a label column)")
        ) from None
    return RawData(x, labels, None, None, label_names, ids_train=ids)


def _column_index(path: Path, header: list[str] | None, width: int, column: str | int | None, key: str) -> int | None:
    if column is None:
        return None
    if isinstance(column, int):
        if not -width <= column < width:
            raise DataError(f"data.{key}: index {column} is out of range for {width} columns in {path}")
        return column % width
    if header is None or column not in header:
        names = ", ".join(header) if header else "none (no header row)"
        raise DataError(f"data.{key}: no column {shorten(column)} in {path}; columns: {clip(names)}")
    return header.index(column)


def _encode_labels(cells: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels stay numbers; anything else (names, or integers beyond int64 such as 1e20)
    is kept as written, as names."""
    if all(_is_integer(cell) for cell in cells):
        values = [int(float(cell)) for cell in cells]
        if all(-(2**62) < value < 2**62 for value in values):
            return np.array(values, dtype=np.int64), None
    names, codes = np.unique(np.array(cells), return_inverse=True)
    return codes.astype(np.int64), [str(name) for name in names]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_integer(text: str) -> bool:
    return _is_number(text) and float(text).is_integer()


def _first_non_number(rows: list[list[str]]) -> tuple[int, int]:
    for line, row in enumerate(rows):
        for column, cell in enumerate(row):
            if not _is_number(cell):
                return line, column
    return 0, 0


def _validate(raw: RawData, source: str) -> None:
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x is None:
            continue
        if x.dtype.kind not in "biuf":
            raise DataError(f"data.source {source}: {split} data has dtype {x.dtype}, expected numbers")
        if x.ndim < 2 or x.ndim > 4:
            raise DataError(
                f"data.source {source}: {split} data has shape {x.shape}; expected (samples, features) "
                f"or images (samples, height, width[, channels])"
            )
        if len(x) == 0 or math.prod(x.shape[1:]) == 0:
            raise DataError(f"data.source {source}: {split} data is empty (shape {x.shape})")
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                first = int(np.argmax(bad))
                raise DataError(
                    f"data.source {source}: {split} data has {int(bad.sum())} row(s) with NaN or inf "
                    f"(first: row {first}); clean or drop them"
                )
            if x.dtype.itemsize > 4:
                huge = (np.abs(x.reshape(len(x), -1)) > np.finfo(np.float32).max).any(axis=1)
                if huge.any():
                    raise DataError(
                        f"data.source {source}: {split} data has {int(huge.sum())} row(s) with values beyond "
                        f"float32's range, about ±3.4e38 (first: row {int(np.argmax(huge))}); rescale or drop them"
                    )
        if y is not None:
            if y.dtype.kind not in "biu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
                raise DataError(f"data.source {source}: {split} labels have dtype {y.dtype}, expected integers")
            if y.ndim != 1 or len(y) != len(x):
                raise DataError(
                    f"data.source {source}: {len(x)} {split} samples but labels of shape {y.shape}; "
                    f"images and labels must have the same length"
                )
    if raw.x_test is not None and raw.x_test.shape[1:] != raw.x_train.shape[1:]:
        raise DataError(
            f"data.source {source}: train samples have shape {raw.x_train.shape[1:]} "
            f"but test samples {raw.x_test.shape[1:]}"
        )


def fit_scaling(x_train: np.ndarray, kind: str, is_image: bool) -> Scaling:
    """Fit the [0,1] scaling on the training split only, so validation and test stay unseen."""
    flat = x_train.reshape(len(x_train), -1)  # min and max are exact in any dtype: no float64 copy
    low, high = flat.min(axis=0).astype(np.float64), flat.max(axis=0).astype(np.float64)
    return scaling_from_ranges(kind, low, high, x_train.dtype, is_image)


def scaling_from_ranges(kind: str, low: np.ndarray, high: np.ndarray, dtype: np.dtype, is_image: bool) -> Scaling:
    """The scaling for per-feature training minima and maxima (which a streaming pass can compute)."""
    if kind == "auto":
        if dtype == np.uint8:
            return Scaling("uint8", np.zeros((), np.float32), np.full((), 255.0, np.float32))
        kind = "global" if is_image else "minmax"
    if kind == "none":
        return Scaling("none", np.zeros((), np.float32), np.ones((), np.float32))
    if kind == "global":
        low_g, high_g = float(low.min()), float(high.max())
        span = high_g - low_g if high_g > low_g else 1.0
        return _finite_scaling(Scaling("global", np.asarray(low_g), np.asarray(span)))
    span_f = np.where(high > low, high - low, 1.0)
    return _finite_scaling(Scaling("minmax", low.astype(np.float64), span_f.astype(np.float64)))


def _finite_scaling(scaling: Scaling) -> Scaling:
    """Offsets and spans are kept in float64, so that data of large magnitude (timestamps, ids:
    1e12 + small changes) still scales exactly; they must fit float32 too, which streamed shards
    scale in: ±3e38 in one column spans 6e38, which does not."""
    limit = float(np.finfo(np.float32).max)
    if not (np.abs(scaling.offset) <= limit).all() or not (np.abs(scaling.scale) <= limit).all():
        raise DataError(
            f"data.scaling {scaling.kind}: the training data spans more than float32 holds (about 3.4e38); "
            "rescale the data first"
        )
    return scaling


def _class_mask(y: np.ndarray | None, classes: list[int | str], label_names: list[str] | None) -> np.ndarray:
    if y is None:
        raise DataError("data.classes: the source has no labels to filter on")
    keep = np.isin(y, label_codes(classes, label_names, "data.classes"))
    if not keep.any():
        raise DataError(
            f"data.classes: none of {classes} occur in the training labels (present: {present_labels(y, label_names)})"
        )
    return keep


def label_codes(values: list[int | str], label_names: list[str] | None, what: str) -> list[int]:
    """The codes of labels given by value, as written in the data: numbers, or names for
    string labels (stored as positions in `label_names`). Names absent from the data match nothing."""
    if label_names is not None:
        index = {name: code for code, name in enumerate(label_names)}
        return [index[str(value)] for value in values if str(value) in index]
    codes = []
    for value in values:
        text = str(value).strip()
        if not _is_integer(text):
            raise DataError(f"{what}: {value!r} is not a label of this data, whose labels are integers")
        codes.append(int(float(text)))
    return codes


def label_name(label: Any, label_names: list[str] | None) -> str:
    """A label as written in the data: its name for string labels, else the number."""
    return label_names[int(label)] if label_names else str(int(label))


def present_labels(y: np.ndarray, label_names: list[str] | None, most: int = 20) -> str:
    """The labels in `y`, as written in the data, for messages."""
    values = np.unique(y)
    shown = ", ".join(repr(label_name(v, label_names)) if label_names else str(v) for v in values[:most])
    return shown + (f", ... ({len(values)} in all)" if len(values) > most else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
