"""The run directory: unique naming, atomic writes and the `run.json` status record.

Every file is written to a temporary name in the same folder and renamed into place, so a
crash leaves either the previous complete file or none, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from aecli.config import AecliConfig, DataConfig, apply_override, load_config, validate_config
from aecli.data import Dataset, Scaling, load_dataset
from aecli.errors import AecliError, ConfigError, DataError, RunError, clip, shorten
from aecli.fingerprints import check_unchanged

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
    safe_name = re.sub(r"[^\w.-]+", "-", name).strip("-.")[:80] or "run"  # letters of any script stay
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


class StagedOutputDir:
    """A hidden folder that a command writes its outputs into, renamed into place (`out`, or
    `<parent>/<prefix>-<timestamp>`) only once the block has finished: an error or an interrupt
    leaves a complete folder or none.

        with StagedOutputDir(out, run_dir, "eval") as staging:
            write everything into staging
        print(staged.final)
    """

    def __init__(self, out: Path | None, parent: Path, prefix: str) -> None:
        self.out, self.parent, self.prefix = out, parent, prefix
        self.final: Path | None = None
        self._staging: Path | None = None

    def __enter__(self) -> Path:
        where = self.out.parent if self.out is not None else self.parent
        try:
            where.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.prefix}-partial-", dir=where))
        except OSError as exc:
            raise RunError(f"cannot write into {where}: {exc.strerror}") from None
        return self._staging

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        if self._staging is None:
            return
        try:
            if kind is None:
                os.chmod(self._staging, 0o777 & ~_current_umask())
                final = self.out if self.out is not None else _free_name(self.parent, self.prefix)
                try:
                    os.replace(self._staging, final)  # an empty --out is replaced; a non-empty one refuses
                except OSError as exc:
                    raise RunError(f"cannot move the results into {final}: {exc.strerror}") from None
                self.final = final
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)


def _free_name(parent: Path, prefix: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = parent / (f"{prefix}-{stamp}" + (f"-{attempt}" if attempt else ""))
        if not candidate.exists():
            return candidate
    raise RunError(f"could not find a free folder name under {parent}")


def now_iso() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def read_json(path: Path, what: str) -> Any:
    """A JSON file aecli wrote; a damaged one (garbage, truncated, absurdly nested) is a RunError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunError(f"{path}: unreadable {what} ({clip(str(exc) or type(exc).__name__)})") from None


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise RunError(f"not a run directory (no such folder): {run_dir}")
    if not path.exists():
        raise RunError(f"not a run directory (no {RUN_FILE}): {run_dir}")
    info = read_json(path, "run record")
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

    def data_config_for(self, source: str, overrides: Sequence[str], option: str) -> DataConfig:
        """How to read another source the way this run read its data: a CSV keeps the run's label
        and id columns; nothing that selects rows (limit, classes) carries over, so every row is
        read unless a `--set data.KEY=VALUE` override says otherwise."""
        data: dict[str, Any] = {"source": source}
        if source.lower().endswith(".csv"):
            for key in ("label_column", "id_column"):
                if getattr(self.config.data, key) is not None:
                    data[key] = getattr(self.config.data, key)
        raw: dict[str, Any] = {"data": data}
        for override in overrides:
            if not override.strip().startswith("data."):
                raise ConfigError(f"--set {shorten(override)}: {option} takes data.KEY=VALUE overrides only")
            apply_override(raw, override)
        return validate_config(raw).data

    def test_split(self, force: bool) -> Dataset:
        """The run's own test split, rebuilt from its data files: refused when a file changed
        since training (unless `force`) or when the data no longer has the model's shape."""
        check_unchanged(recorded_fingerprints(self.info), force)
        dataset = load_dataset(self.config.data, seed=self.config.training.seed, test_only=True)
        if dataset.sample_shape != self.sample_shape:
            raise DataError(
                f"data.source {self.config.data.source}: samples now have shape {dataset.sample_shape}, but the "
                f"run's model was trained on {self.sample_shape}"
            )
        return dataset


def open_trained_run(run_dir: Path, needs: Sequence[str] = ()) -> TrainedRun:
    """Check that `run_dir` is a completed run with all its artifacts (and the files in `needs`),
    and read its records."""
    info = read_run_info(run_dir)
    if info["status"] != "completed":
        raise RunError(f"run {run_dir} is {info['status']}, not completed; train it again (or resume it)")
    missing = [name for name in (*REQUIRED_ARTIFACTS, "metrics.json", *needs) if not (run_dir / name).is_file()]
    if missing:
        raise RunError(f"run {run_dir} is incomplete: missing {', '.join(missing)}")
    try:
        config = load_config(run_dir / "config.yaml")
        metrics = read_json(run_dir / "metrics.json", "metrics")
        str(metrics["train_errors"]["default_threshold"])
        data = info["data"]
        scaling = Scaling.from_dict(data["scaling"])
        sample_shape = tuple(int(size) for size in data["sample_shape"])
        _check_scaling(scaling, sample_shape)
    except (AecliError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise RunError(f"run {run_dir} has unreadable records ({clip(str(exc))})") from None
    return TrainedRun(run_dir, info, config, scaling, sample_shape, metrics)


def _check_scaling(scaling: Scaling, sample_shape: tuple[int, ...]) -> None:
    """A saved scaling is one number, or one per feature, finite, and never divides by zero."""
    sizes = {1, math.prod(sample_shape)}
    if scaling.offset.size not in sizes or scaling.scale.size not in sizes:
        raise ValueError(f"data.scaling does not fit samples of shape {sample_shape}")
    if not (np.isfinite(scaling.offset).all() and np.isfinite(scaling.scale).all() and (scaling.scale != 0).all()):
        raise ValueError("data.scaling holds values that are not finite, or a zero scale")


def load_model(path: Path, compile: bool = True) -> Any:
    """Load a `.keras` file with safe mode on: a file carrying code (a Lambda layer) is refused.

    `compile=False` skips the optimizer state: what inference (evaluate, reconstruct) loads."""
    from aecli.backend import import_tensorflow

    import_tensorflow()
    import keras

    import aecli.layers  # noqa: F401  (registers aecli's custom objects for VAE and sparse models)

    check_keras_archive(path)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:  # Keras raises many types for corrupt, foreign or unsafe files
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RunError(f"model file {path} failed to load: {reason}") from None


def check_keras_archive(path: Path) -> None:
    """A `.keras` file is a zip archive; Keras reports a damaged one as "File not found"."""
    if not path.is_file():
        raise RunError(f"model file {path} is missing")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise RunError(f"model file {path} is corrupt or truncated (not a complete .keras archive: {exc})") from None
    if damaged is not None:
        raise RunError(f"model file {path} is corrupt: {damaged} inside it fails its checksum")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `<run>/.lock` while a process trains into the run: a second `train --resume` of the
    same run is refused instead of writing the same epochs twice. The kernel releases the lock
    when the holder exits, however it exits, so a killed run never stays locked."""
    path = run_dir / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        raise RunError(f"cannot lock run {run_dir}: {exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunError(f"run {run_dir} is being trained by {owner}; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


LOCK_FILE = ".lock"


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
    data = read_json(path, "resume state")
    epoch, history, best = data["epoch"], data["history"], data.get("best")
    rows_ok = isinstance(history, list) and all(
        isinstance(row, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())
        for row in history
    )
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or not rows_ok or len(history) != epoch:
        raise ValueError("epoch must count the rows of history, each a mapping of numbers")
    if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool)):
        raise ValueError(f"best must be a number, got {shorten(best)}")
    return ResumeState(epoch, history, best)


def recorded_fingerprints(info: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """run.json's data.fingerprints, checked for shape (None for runs recorded before them)."""
    data = info.get("data", {})
    if not isinstance(data, dict):
        raise RunError(f"run.json: damaged data record (expected a mapping, got {shorten(data)})")
    prints = data.get("fingerprints")
    if prints is None:
        return None
    if not isinstance(prints, dict) or not all(isinstance(p, dict) for p in prints.values()):
        raise RunError("run.json: damaged data.fingerprints (expected a mapping of file -> {bytes, sha256})")
    return prints


def config_digest(path: Path) -> str:
    """SHA-256 of a run's config.yaml as written: a resume refuses a config edited since."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
