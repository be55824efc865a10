"""The run directory: unique naming, atomic writes and the `run.json` status record.

Every file is written to a temporary name in the same folder and renamed into place, so a
crash leaves either the previous complete file or none, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aecli.config import AecliConfig, load_config
from aecli.data import Scaling
from aecli.errors import AecliError, RunError

RUN_FILE = "run.json"
REQUIRED_ARTIFACTS = ("config.yaml", "model.keras", "encoder.keras", "decoder.keras", RUN_FILE)
STATUSES = ("running", "completed", "failed", "interrupted")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates owner-only files; artifacts get the permissions a plain open() would give.
FILE_MODE = 0o666 & ~_current_umask()


def create_run_dir(runs_dir: Path, name: str) -> Path:
    """Make `<runs_dir>/<name>-<YYYYmmdd-HHMMSS>[-N]`; never reuses an existing folder.

    `mkdir` without `exist_ok` is atomic, so two processes started in the same second
    get different folders.
    """
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the runs folder {runs_dir}: {exc.strerror}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = runs_dir / (f"{safe_name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunError(f"cannot create run folder {candidate}: {exc.strerror}") from None
        return candidate
    raise RunError(f"could not find a free run folder name under {runs_dir}")


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


def check_new_output_dir(out: Path | None) -> Path | None:
    """An explicit --out must be new or empty: results are never written over earlier ones."""
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out}: already exists and is not an empty folder; choose a new one")
    return out


def now_iso() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise RunError(f"not a run directory (no such folder): {run_dir}")
    if not path.exists():
        raise RunError(f"not a run directory (no {RUN_FILE}): {run_dir}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable run record ({exc})") from None
    if not isinstance(info, dict) or info.get("status") not in STATUSES:
        raise RunError(f"{path}: not an aecli run record")
    return info


def update_run_info(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into run.json (creating it if needed) atomically; returns the new record."""
    path = run_dir / RUN_FILE
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    info.update(changes)
    write_json_atomic(path, info)
    return info


@dataclass(frozen=True)
class TrainedRun:
    """A completed run, read back: what evaluate and reconstruct need to use its model."""

    path: Path
    info: dict[str, Any]
    config: AecliConfig
    scaling: Scaling
    sample_shape: tuple[int, ...]
    metrics: dict[str, Any]


def open_trained_run(run_dir: Path) -> TrainedRun:
    """Check that `run_dir` is a completed run with all its artifacts, and read its records."""
    info = read_run_info(run_dir)
    if info["status"] != "completed":
        raise RunError(f"run {run_dir} is {info['status']}, not completed; train it again (or resume it)")
    missing = [name for name in (*REQUIRED_ARTIFACTS, "metrics.json") if not (run_dir / name).is_file()]
    if missing:
        raise RunError(f"run {run_dir} is incomplete: missing {', '.join(missing)}")
    try:
        config = load_config(run_dir / "config.yaml")
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        data = info["data"]
        scaling = Scaling.from_dict(data["scaling"])
        sample_shape = tuple(int(size) for size in data["sample_shape"])
    except (AecliError, KeyError, TypeError, ValueError) as exc:
        raise RunError(f"run {run_dir} has unreadable records ({exc})") from None
    return TrainedRun(run_dir, info, config, scaling, sample_shape, metrics)


def load_model(path: Path, compile: bool = True) -> Any:
    """Load a `.keras` file with safe mode on: a file carrying code (a Lambda layer) is refused.

    `compile=False` skips the optimizer state: what inference (evaluate, reconstruct) loads."""
    from aecli.backend import import_tensorflow

    import_tensorflow()
    import keras

    import aecli.layers  # noqa: F401  (registers aecli's custom objects for VAE and sparse models)

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:  # Keras raises many types for corrupt, foreign or unsafe files
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RunError(f"model file {path} failed to load: {reason}") from None


@dataclass
class ResumeState:
    """Where an interrupted run stopped: epochs finished, their history, the best monitored value."""

    epoch: int
    history: list[dict[str, float]]
    best: float | None = None


STATE_FILE = "state.json"


def read_resume_state(run_dir: Path) -> ResumeState | None:
    """The state written with checkpoints/last.keras, or None when no epoch finished."""
    path = run_dir / "checkpoints" / STATE_FILE
    if not path.is_file() or not (run_dir / "checkpoints" / "last.keras").is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return ResumeState(int(data["epoch"]), list(data["history"]), data.get("best"))
