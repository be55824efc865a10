"""The one error family the CLI catches: each message is a single actionable line."""

from __future__ import annotations

import errno
import reprlib
from typing import Any


class AecliError(Exception):
    """A problem with the user's input or environment, never a bug; the CLI prints it on one line."""

    exit_code = 2


class ConfigError(AecliError):
    """The configuration file or an override is invalid."""


class DataError(AecliError):
    """A data source is missing, unreadable, corrupt or has invalid values."""


class RunError(AecliError):
    """A run directory is missing, incomplete or cannot be written."""


class EvaluationError(AecliError):
    """An evaluate/reconstruct request that cannot be answered (bad option, missing labels, shapes)."""


class StorageError(AecliError):
    """The disk filled up (or a file-size limit was hit) while writing: the data is fine, the
    machine is not; what was written before stays complete (every write is atomic)."""

    exit_code = 3


# No space, a file-size limit (ulimit -f), a disk quota.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def as_storage_error(exc: BaseException) -> StorageError | None:
    """The StorageError that `exc` (or an exception it was raised from) amounts to, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            where = f" writing {current.filename}" if current.filename else ""
            return StorageError(
                f"{current.strerror or 'no space'}{where}: free some space (or raise the file-size limit); "
                "an interrupted training run continues with aecli train --resume RUN_DIR"
            )
        current = current.__cause__ or current.__context__
    return None


# A path that cannot be used as given: permissions, a name too long, a symlink loop, a file
# where a folder should be (or the reverse), a read-only file system.
PATH_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EROFS}
)


def as_path_error(exc: OSError) -> AecliError | None:
    """The one-line error for an OSError that is the user's path, not a bug."""
    if exc.errno not in PATH_ERRNOS:
        return None
    return AecliError(f"{exc.strerror}: {clip(str(exc.filename or '?'), 300)}")


class TrainingDivergedError(AecliError):
    """The loss became NaN or inf: the run is marked failed, with what was saved so far kept."""

    exit_code = 1


def shorten(value: Any, limit: int = 80) -> str:
    """A value as it may appear in a one-line message: its repr, on one line, cut at `limit`."""
    return clip(_BOUNDED_REPR.repr(value), limit)


def clip(text: str, limit: int = 200) -> str:
    """Text on one line, cut at `limit` characters."""
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


# repr that never walks more than a few levels or items of a (possibly huge) value.
_BOUNDED_REPR = reprlib.Repr()
_BOUNDED_REPR.maxlevel, _BOUNDED_REPR.maxstring, _BOUNDED_REPR.maxother = 3, 60, 60
