"""Workers of a cluster reading their own shard files (data.sharing), checked in one process:
each "worker" is a thread, and their collectives meet at a barrier, as TensorFlow's would."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aecli.commands.prepare import prepare_shards
from aecli.config import DataConfig
from aecli.data.shards import ShardedData, open_sharded
from aecli.data.sharing import WorkerShare
from aecli.errors import ConfigError, DataError
from aecli.evaluation import report_split
from tests.test_shards import numbered_rows


class ThreadCluster:
    """`count` workers whose gather concatenates every worker's array in worker order."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.barrier = threading.Barrier(count, timeout=60)
        self.arrays: list[Any] = [None] * count
        self.gathers = 0

    def share(self, index: int) -> WorkerShare:
        def gather(array: np.ndarray) -> np.ndarray:
            self.arrays[index] = array
            self.barrier.wait()
            joined = np.concatenate(self.arrays)
            self.barrier.wait()  # nobody overwrites its slot before everyone has read
            if index == 0:
                self.gathers += 1
            return joined

        return WorkerShare(index, self.count, gather, distribute=lambda make: make())

    def run(self, work: Callable[[WorkerShare], Any]) -> list[Any]:
        """`work(share)` on every worker at once; their results in worker order."""
        results: list[Any] = [None] * self.count
        failures: list[BaseException] = []

        def worker(index: int) -> None:
            try:
                results[index] = work(self.share(index))
            except BaseException as exc:  # re-raised in the test's thread
                failures.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=worker, args=(index,)) for index in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return results


def folder(tmp_path: Path, shards: int, rows: int = 1000, dtype: str = "float32") -> Path:
    source = numbered_rows(tmp_path, rows, dtype=dtype)
    cfg = DataConfig(source=str(source), labels_path=tmp_path / "labels.npy")
    return prepare_shards(cfg, tmp_path / "shards", None, "npy", say=lambda _: None, shards=shards).out_dir


def rows_of(data: ShardedData, part: str) -> set[int]:
    return {int(i) for rows, _ in data.blocks(part) for i in rows[:, 0]}


@pytest.mark.parametrize("workers", [2, 3])
def test_each_worker_reads_only_its_own_files_and_together_they_read_the_folder_once(
    workers: int, tmp_path: Path
) -> None:
    cfg = DataConfig(source=str(folder(tmp_path, shards=2 * workers)), scaling="minmax")
    alone = open_sharded(cfg, seed=3)
    cluster = ThreadCluster(workers)
    shares = cluster.run(lambda share: open_sharded(cfg, seed=3, share=share))

    assert all(data.share is not None and data.sharing_note is None for data in shares)
    files = [data.reads.files for data in shares]
    assert all(len(own) == 2 for own in files)  # two of the 2N files each, none twice
    assert set().union(*files) == {shard.path.name for shard in alone.shards.splits["train"].shards}
    # Opening reads each file once per part it checks (training rows, then validation and test
    # for NaN): every worker read exactly its own rows, 3 times; together, the folder 3 times.
    assert sum(data.reads.rows for data in shares) == 3 * 1000
    for data in shares:
        own_rows = sum(shard.rows for shard in data.files("train"))
        assert data.reads.rows == 3 * own_rows
    # The parts are the single process's, split between the workers without overlap.
    for part in ("train", "validation", "test"):
        seen = [rows_of(data, part) for data in shares]
        assert sum(len(s) for s in seen) == len(set().union(*seen)) == alone.counts[part]
        assert set().union(*seen) == rows_of(alone, part)
        if part != "test":  # what each worker was told it holds, which decides the steps
            assert [len(s) for s in seen] == shares[0].worker_counts[part]
    # The scaling comes from every worker's training rows: the same as one process's.
    for data in shares:
        np.testing.assert_array_equal(data.scaling.offset, alone.scaling.offset)
        np.testing.assert_array_equal(data.scaling.scale, alone.scaling.scale)


def test_the_report_gathers_every_workers_rows_in_the_single_process_order(tmp_path: Path) -> None:
    import keras

    cfg = DataConfig(source=str(folder(tmp_path, shards=4)), scaling="minmax")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, kernel_initializer="glorot_uniform")])
    alone = report_split(model, open_sharded(cfg, seed=0), "test", per_class=True)
    cluster = ThreadCluster(2)

    def report(share: WorkerShare) -> Any:
        data = open_sharded(cfg, seed=0, share=share)
        return report_split(model, data, "test", per_class=True), data.reads.rows

    (first, first_read), (second, second_read) = cluster.run(report)
    for gathered in (first, second):  # every worker gets the whole split
        np.testing.assert_array_equal(gathered.origin["source_row"], alone.origin["source_row"])
        np.testing.assert_array_equal(gathered.labels, alone.labels)
        for name in ("mse", "mae"):
            np.testing.assert_allclose(gathered.errors[name], alone.errors[name], rtol=1e-6)
        for label, row in alone.metrics["per_class"].items():
            assert gathered.metrics["per_class"][label] == pytest.approx(row, rel=1e-6)
    assert first_read + second_read == 4 * 1000  # opening (3 passes) and the report (1): each file once a pass


def test_too_few_files_for_the_workers_falls_back_to_every_worker_reading_everything(tmp_path: Path) -> None:
    cfg = DataConfig(source=str(folder(tmp_path, shards=2)))
    shares = ThreadCluster(3).run(lambda share: open_sharded(cfg, seed=0, share=share))
    for data in shares:
        assert data.share is None and "prepare it with --shards 3" in (data.sharing_note or "")
        assert len(data.reads.files) == 2  # all of them


def test_a_worker_whose_files_hold_no_kept_rows_falls_back(tmp_path: Path) -> None:
    cfg = DataConfig(source=str(folder(tmp_path, shards=4)), limit=200)  # only the first file's rows count
    shares = ThreadCluster(2).run(lambda share: open_sharded(cfg, seed=0, share=share))
    assert all(data.share is None and "hold no training" in (data.sharing_note or "") for data in shares)


def test_nan_in_one_workers_files_stops_every_worker_with_the_reason(tmp_path: Path) -> None:
    shards = tmp_path / "npy"
    shards.mkdir()
    for number in range(4):  # a plain folder of .npy files (prepare refuses NaN)
        rows = np.random.default_rng(number).random((250, 6)).astype(np.float32)
        if number == 3:  # worker 1's second file
            rows[100, 2] = np.nan
        np.save(shards / f"part{number}.npy", rows)
    cfg = DataConfig(source=str(shards), scaling="minmax")
    errors: dict[int, str] = {}

    def opened(share: WorkerShare) -> None:
        try:
            open_sharded(cfg, seed=0, share=share)
        except DataError as exc:
            errors[share.index] = str(exc)

    ThreadCluster(2).run(opened)
    assert errors[0] == f"data.source {shards}: worker 1's shard files are damaged or hold NaN or inf"
    assert "NaN or inf" in errors[1]  # its own message, naming the split


def test_the_global_batch_must_split_evenly_between_workers() -> None:
    share = WorkerShare(0, 3, gather=lambda a: a, distribute=lambda make: make())
    share.check_batch(96)
    assert share.local_batch(96) == 32
    with pytest.raises(ConfigError, match="batch_size 100 is the global batch: with 3 workers"):
        share.check_batch(100)


def test_prepare_writes_as_many_files_per_split_as_asked(tmp_path: Path) -> None:
    out = folder(tmp_path, shards=3, rows=1000)
    assert sorted(p.name for p in out.glob("train-*.npy") if ".labels" not in p.name) == [
        f"train-{n:05d}-of-00003.npy" for n in range(3)
    ]
    assert [len(np.load(p)) for p in sorted(out.glob("train-*-of-00003.npy"))] == [333, 333, 334]
    few = prepare_shards(DataConfig(source=str(tmp_path / "rows.npy")), tmp_path / "few", None, "npy", print, 4)
    assert few.shards == 4
    with pytest.raises(ConfigError, match="--shards 0"):
        prepare_shards(DataConfig(source="digits"), tmp_path / "other", None, "npy", lambda _: None, shards=0)
    with pytest.raises(ConfigError, match="--shard-size and --shards both"):
        prepare_shards(DataConfig(source="digits"), tmp_path / "other", 100, "npy", lambda _: None, shards=2)
    (tmp_path / "tiny").mkdir()
    tiny = numbered_rows(tmp_path / "tiny", rows=3)  # fewer rows than files asked for: a file a row
    assert prepare_shards(DataConfig(source=str(tiny)), tmp_path / "t", None, "npy", print, shards=8).shards == 3
