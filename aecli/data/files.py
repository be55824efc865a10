"""Data files: IDX (raw or gzip, single files or a folder), .npz, .npy and .csv.

Every file is hostile until checked: headers are read and checked against the file's size
before numpy allocates anything, and every failure is a one-line DataError naming the file.
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
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from aecli.config import BUILTIN_SOURCES
from aecli.data.arrays import RawData
from aecli.data.labels import encode_labels, is_number
from aecli.data.source_kind import SourceKind, SourceRequest
from aecli.errors import DataError, clip, shorten

# IDX type codes (http://yann.lecun.com/exdb/mnist/ layout), all big-endian.
IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_file_source(request: SourceRequest) -> RawData:
    """An IDX file or folder, .npz, .npy or .csv file, as raw arrays (not yet checked: see arrays.check_raw)."""
    path = Path(request.source)
    if not path.exists():
        hint = f" (built-in sources: {', '.join(BUILTIN_SOURCES)})" if "/" not in str(path) else ""
        raise DataError(f"data.source: no such file or folder: {path}{hint}")
    for key in ("label_column", "id_column"):
        if getattr(request, key) is not None and path.suffix.lower() != ".csv":
            raise DataError(f"data.{key}: applies to .csv sources only, not {path.name}")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"data.source: {path} is not a regular file or folder")
    if path.is_dir():
        return _read_idx_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".npy":
        return RawData(_read_npy(path, request.mmap), _read_labels(request.labels_path), None, None)
    if suffix == ".csv":
        return _read_csv(path, request.label_column, request.id_column)
    if _looks_like_idx(path):
        labels = _read_labels(request.labels_path) if request.labels_path else _read_sibling_idx_labels(path)
        return RawData(read_idx(path), labels, None, None)
    raise DataError(f"data.source: unsupported file {path.name}; expected an IDX file (.gz or raw), .npz, .npy or .csv")


# Anything the other kinds do not claim is a path: a missing one gets "no such file" from here.
SOURCE_KIND = SourceKind("files", claims=lambda request: True, read=read_file_source)


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
    header = rows[0] if not all(is_number(cell) for cell in rows[0]) else None
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
    label_index = column_index(path, header, width, label_column, "label_column")
    id_index = column_index(path, header, width, id_column, "id_column")
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
        labels, label_names = encode_labels(label_cells)
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
    names = [header[index].strip() for index in kept] if header else None
    return RawData(x, labels, None, None, label_names, ids_train=ids, feature_names=names)


def column_index(path: Path, header: list[str] | None, width: int, column: str | int | None, key: str) -> int | None:
    if column is None:
        return None
    if isinstance(column, int):
        if not -width <= column < width:
            raise DataError(f"data.{key}: index {column} is out of range for {width} columns in {path}")
        return column % width
    if header is None or column not in header:
        names = ", ".join(header) if header else "none (no header row)"
        raise DataError(f"data.{key}: no column {shorten(column)} in {path}; columns: {clip(names)}")
    positions = [index + 1 for index, name in enumerate(header) if name == column]
    if len(positions) > 1:
        raise DataError(
            f"data.{key}: {path}'s header names {shorten(column)} {len(positions)} times (columns "
            f"{', '.join(map(str, positions[:5]))}); rename them, or give the column's index"
        )
    return header.index(column)


def _first_non_number(rows: list[list[str]]) -> tuple[int, int]:
    for line, row in enumerate(rows):
        for column, cell in enumerate(row):
            if not is_number(cell):
                return line, column
    return 0, 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
