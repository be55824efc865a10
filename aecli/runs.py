"""The run directory: unique naming, the `run.json` status record, the lock held while training,
the resume state beside the last checkpoint, and output folders that appear complete or not at
all. Every file goes through atomic.py's writers."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aecli.atomic import current_umask, read_json, write_json_atomic
from aecli.errors import RunError, shorten
from aecli.interrupts import raise_pending

RUN_FILE = "run.json"
AUGMENTED_SAMPLES = "augmented_samples.png"  # training images and augmented versions (data.augment)
REQUIRED_ARTIFACTS = ("config.yaml", "model.keras", "encoder.keras", "decoder.keras", RUN_FILE)
STATUSES = ("running", "completed", "failed", "interrupted")


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
                raise_pending()  # a swallowed Ctrl-C: no folder
                os.chmod(self._staging, 0o777 & ~current_umask())
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


def write_resume_state(folder: Path, state: ResumeState, monitor: str) -> None:
    """checkpoints/state.json, written with checkpoints/last.keras after every epoch."""
    record = {"epoch": state.epoch, "history": state.history, "best": state.best, "monitor": monitor}
    write_json_atomic(folder / STATE_FILE, record)


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
