from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aecli.atomic import atomic_path, write_json_atomic
from aecli.errors import RunError
from aecli.runs import create_run_dir, read_run_info, update_run_info


def test_run_dirs_created_in_the_same_second_are_distinct(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: create_run_dir(tmp_path, "exp"), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)


def test_run_names_are_made_filesystem_safe(tmp_path: Path) -> None:
    assert create_run_dir(tmp_path, "my exp/../x").name.startswith("my-exp-..-x-")


def test_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_text("{half")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) & 0o044  # readable by group/others


def test_run_info_round_trip_and_errors(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not a run directory .no run.json"):
        read_run_info(tmp_path)
    update_run_info(tmp_path, status="running", seed=1)
    update_run_info(tmp_path, status="completed")
    assert read_run_info(tmp_path) == {"status": "completed", "seed": 1}
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunError, match="unreadable run record"):
        read_run_info(tmp_path)
