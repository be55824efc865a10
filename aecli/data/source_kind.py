"""What a family of data sources provides to the rest of aecli (see sources.py for the list).

A new kind of data (text, time series) is one module that defines a `SourceKind` and one line
in `sources.SOURCE_KINDS`; nothing outside `data/` asks which kind it is, only whether the data is
held in memory (`Dataset`) or streamed (`ShardedData`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aecli.config import DataConfig, SequencesConfig, SeriesConfig, TextConfig, WindowConfig
    from aecli.data.arrays import Dataset, RawData, Samples
    from aecli.data.scaling import Scaling


@dataclass(frozen=True)
class SourceRequest:
    """How to read a source: data.source and the data keys that say how its files are laid out."""

    source: str
    labels_path: Path | None = None
    label_column: str | int | None = None
    id_column: str | int | None = None
    mmap: bool = False  # an .npy file may be memory-mapped (read once, in order: `aecli prepare`)
    limit: int | None = None  # rows of each split that will be used: a streamed kind reads no more
    series: SeriesConfig | None = None
    window: WindowConfig | None = None
    sequences: SequencesConfig | None = None
    text: TextConfig | None = None
    text_column: str | int | list[str | int] | None = None


@dataclass(frozen=True)
class SourceKind:
    """One family of sources: which `data.source` values it claims and how to read them.

    `read` returns every row in memory (validated afterwards by the caller); `stream`, for
    kinds too large for memory, opens the source for training block by block instead.
    `sample_shape`, when given, answers `aecli validate` without reading the rows. A kind whose
    samples are not rows (windows of a series) splits and scales them itself: `load` (training
    data) and `load_for_model` (any data scored by a trained run).
    """

    name: str
    claims: Callable[[SourceRequest], bool]
    read: Callable[[SourceRequest], RawData]
    # (config, seed, worker share or None) -> a streamed view, like shards.ShardedData
    stream: Callable[..., Any] | None = None
    # for a kind that streams only some sources (texts too large for memory): whether this one
    streams: Callable[[DataConfig], bool] | None = None
    sample_shape: Callable[[SourceRequest], tuple[int, ...]] | None = None
    load: Callable[[DataConfig, int], Dataset] | None = None
    load_for_model: Callable[[DataConfig, tuple[int, ...], Scaling], Samples] | None = None

    def streams_source(self, cfg: DataConfig) -> bool:
        """Whether training streams this source block by block instead of loading it."""
        return self.stream is not None and (self.streams is None or self.streams(cfg))
