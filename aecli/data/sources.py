"""The registry of source kinds: which module reads a given `data.source`.

Order matters: the first kind that claims a source reads it, and `files` claims whatever is
left (so a missing path gets its "no such file" message).
"""

from __future__ import annotations

from pathlib import Path

from aecli.config import DataConfig
from aecli.data import builtin, files, shards
from aecli.data.arrays import RawData, check_raw, sample_shape_of
from aecli.data.source_kind import SourceKind, SourceRequest

SOURCE_KINDS: tuple[SourceKind, ...] = (builtin.SOURCE_KIND, shards.SOURCE_KIND, files.SOURCE_KIND)


def source_kind(source: str) -> SourceKind:
    return next(kind for kind in SOURCE_KINDS if kind.claims(source))


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
    return _read(SourceRequest(source, labels_path, label_column, id_column, mmap, limit))


def read_data(cfg: DataConfig, limit: int | None = None, mmap: bool = False) -> RawData:
    """`read_source` for the files a data config names, laid out as it says."""
    return _read(_request(cfg, limit, mmap))


def _read(request: SourceRequest) -> RawData:
    raw = source_kind(request.source).read(request)
    check_raw(raw, request.source)
    return raw


def _request(cfg: DataConfig, limit: int | None = None, mmap: bool = False) -> SourceRequest:
    return SourceRequest(cfg.source, cfg.labels_path, cfg.label_column, cfg.id_column, mmap, limit)


def peek_sample_shape(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one sample, read cheaply (no TensorFlow, no scikit-learn) for `aecli validate`."""
    kind = source_kind(cfg.source)
    if kind.sample_shape is not None:
        return kind.sample_shape(_request(cfg))
    return sample_shape_of(read_data(cfg).x_train)


def is_streamed(source: str) -> bool:
    """Whether training streams this source block by block instead of loading it."""
    return source_kind(source).stream is not None
