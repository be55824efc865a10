"""The registry of source kinds: which module reads a given `data.source`.

Order matters: the first kind that claims a source reads it (a series or sequences layout, set
in the data config, comes before any file type), and `files` claims whatever is left (so a
missing path gets its "no such file" message).
"""

from __future__ import annotations

from pathlib import Path

from aecli.config import DataConfig
from aecli.data import builtin, files, sequences, series, shards, text_source
from aecli.data.arrays import RawData, check_raw, sample_shape_of
from aecli.data.source_kind import SourceKind, SourceRequest

SOURCE_KINDS: tuple[SourceKind, ...] = (
    text_source.SOURCE_KIND,
    series.SOURCE_KIND,
    sequences.SOURCE_KIND,
    builtin.SOURCE_KIND,
    shards.SOURCE_KIND,
    files.SOURCE_KIND,
)


def source_kind(request: SourceRequest) -> SourceKind:
    return next(kind for kind in SOURCE_KINDS if kind.claims(request))


def kind_of(cfg: DataConfig) -> SourceKind:
    """The kind that reads the source a data config names."""
    return source_kind(_request(cfg))


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
    raw = source_kind(request).read(request)
    check_raw(raw, request.source)
    return raw


def _request(cfg: DataConfig, limit: int | None = None, mmap: bool = False) -> SourceRequest:
    return SourceRequest(
        cfg.source,
        cfg.labels_path,
        cfg.label_column,
        cfg.id_column,
        mmap,
        limit,
        cfg.series,
        cfg.window if cfg.series is not None else None,
        cfg.sequences,
        cfg.text,
        cfg.text_column,
    )


def peek_sample_shape(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one sample, read cheaply (no TensorFlow, no scikit-learn) for `aecli validate`."""
    request = _request(cfg)
    kind = source_kind(request)
    if kind.sample_shape is not None:
        return kind.sample_shape(request)
    raw = read_data(cfg)
    return sample_shape_of(raw.x_train, raw.sequences)


def is_streamed(cfg: DataConfig) -> bool:
    """Whether training streams this source block by block instead of loading it."""
    return kind_of(cfg).streams_source(cfg)
