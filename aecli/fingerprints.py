"""Content fingerprints of the files a run was trained on, so that later commands notice when
the data under a run has changed (same path, different rows) instead of silently rebuilding a
"test split" that now holds training rows."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from aecli.config import BUILTIN_SOURCES, DataConfig
from aecli.errors import DataError


def data_files(cfg: DataConfig) -> list[Path]:
    """The files `cfg` reads: the source file (or every file of a source folder) and the labels file."""
    if cfg.source in BUILTIN_SOURCES:
        return []
    source = Path(cfg.source)
    files = sorted(path for path in source.iterdir() if path.is_file()) if source.is_dir() else [source]
    if cfg.labels_path is not None:
        files.append(cfg.labels_path)
    return files


def fingerprint(cfg: DataConfig) -> dict[str, dict[str, Any]]:
    """{path: {bytes, sha256}} for every file `cfg` reads (one sequential read of each)."""
    return {str(path): _file_print(path) for path in data_files(cfg)}


def _file_print(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return {"bytes": path.stat().st_size, "sha256": digest}
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None


def check_unchanged(recorded: dict[str, dict[str, Any]] | None, force: bool) -> list[str]:
    """The recorded files whose content differs now; refused (DataError) unless `force`, when
    the caller is about to rebuild the run's own splits from them. A missing file is left to
    the loader to report; runs recorded before fingerprints existed (None) are not checked."""
    changed = [
        path
        for path, record in (recorded or {}).items()
        if Path(path).is_file() and _file_print(Path(path))["sha256"] != record.get("sha256")
    ]
    if changed and not force:
        others = f"; {len(changed) - 1} other file(s) too" if len(changed) > 1 else ""
        raise DataError(
            f"{changed[0]} changed since the run was trained (its content differs{others}): the split rebuilt "
            "from it may mix training and test rows; restore the file, evaluate a new file with --data, or pass "
            "--force to use it anyway"
        )
    return changed
