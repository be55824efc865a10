"""Files written atomically: to a temporary name in the same folder, then renamed into place, so
a crash leaves either the previous complete file or none, never half of one. The bottom layer:
imports nothing of aecli but its errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aecli.errors import RunError, clip


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates owner-only files; artifacts get the permissions a plain open() would give.
FILE_MODE = 0o666 & ~current_umask()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` (same suffix); rename it over `target` on success."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        os.chmod(temp, FILE_MODE)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json_atomic(target: Path, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_atomic(target: Path, save: Callable[[Path], None]) -> None:
    """Run a saver such as `model.save` on a temporary path, then rename it into place."""
    with atomic_path(target) as temp:
        save(temp)


def read_json(path: Path, what: str) -> Any:
    """A JSON file aecli wrote; a damaged one (garbage, truncated, absurdly nested) is a RunError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunError(f"{path}: unreadable {what} ({clip(str(exc) or type(exc).__name__)})") from None
