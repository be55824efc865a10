"""Multi-worker training: clusters of local `aecli train` processes (TF_CONFIG), their shard
reading, a lost worker or chief, resume. (Split from test_distribute.py, so that the two halves
run on both test workers at once.)"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.test_distribute import last_line, losses

WORKER = ["--quiet", "--set", "training.distribute=multi_worker"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return int(probe.getsockname()[1])


@dataclass
class Worker:
    """A worker process and the files its output goes to."""

    process: subprocess.Popen
    out: Path
    err: Path

    def output(self, timeout: float = 300) -> tuple[str, str]:
        """Wait for it to end; its stdout and stderr."""
        piped = self.process.communicate(timeout=timeout)[0] if self.process.stdout is not None else None
        self.process.wait(timeout=timeout)
        return piped if piped is not None else self.out.read_text(), self.err.read_text()


def start_workers(tmp_path: Path, count: int, *args: str) -> list[Worker]:
    """`count` local worker processes of one cluster running `aecli train ARGS`, their scratch
    folders under tmp_path/tmp (which the test checks are left empty). Worker 0's stdout is a
    pipe (to follow its epochs); everything else goes to files, since a worker blocked on a full
    pipe that nobody reads would stall the whole cluster."""
    cluster = {"worker": [f"localhost:{free_port()}" for _ in range(count)]}
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    workers = []
    for index in range(count):
        out, err = (tmp_path / f"worker-{index}-{free_port()}.{kind}" for kind in ("out", "err"))
        spec = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch), "TF_CONFIG": json.dumps(spec)}
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "aecli", "train", *args],
                stdout=subprocess.PIPE if index == 0 else stdout,
                stderr=stderr,
                text=True,
                env=env,
            )
        workers.append(Worker(process, out, err))
    return workers


def finish(workers: list[Worker]) -> list[str]:
    outputs = [worker.output() for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.process.returncode == 0, err
    return [out for out, _ in outputs]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "vae"])
def test_two_workers_train_to_completion_and_only_the_chief_writes(kind: str, tmp_path: Path) -> None:
    model = {"kind": kind, "encoder": [32], "latent_dim": 4, **({"beta": 0.5} if kind == "vae" else {})}
    # Denoising on a cluster: each worker's trainer corrupts its own batches.
    noise = {"noise": {"kind": "gaussian", "amount": 0.1}} if kind == "dense" else {}
    config = write_config(tmp_path, {"model": model, "training": {"epochs": 2, "batch_size": 32, **noise}})
    workers = start_workers(tmp_path, 2, str(config), "--runs-dir", str(tmp_path / "runs"), *WORKER)
    outputs = finish(workers)
    (run,) = (tmp_path / "runs").iterdir()  # exactly one run directory
    assert last_line(outputs[0]) == run
    assert "the chief worker writes the run directory" in outputs[1]
    assert not list((tmp_path / "tmp").iterdir())  # the other worker's scratch run is gone
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed"
    assert info["worker_input"]["files_per_worker"] == "all"  # in-memory data: every worker reads it
    history = (run / "history.csv").read_text()
    assert len(losses(run)) == 2 and ("kl_loss" in history) == (kind == "vae")
    import keras

    from aecli.layers import custom_objects  # a VAE's classes, as the README tells users to pass

    model = keras.saving.load_model(run / "model.keras", custom_objects=custom_objects())
    assert model.name != "multi_worker_trainer"  # the autoencoder itself
    trainer = keras.saving.load_model(run / "checkpoints" / "last.keras", custom_objects=custom_objects())
    assert trainer.noise == ("gaussian:0.1" if kind == "dense" else None)


def shard_folder(tmp_path: Path, files: int) -> Path:
    from aecli.commands.prepare import prepare_shards
    from aecli.config import DataConfig

    out = prepare_shards(DataConfig(source="digits"), tmp_path / "shards", None, "npy", lambda _: None, shards=files)
    return out.out_dir


@pytest.mark.slow
@pytest.mark.parametrize("count", [3])  # (2 workers: every other test here)
def test_workers_over_a_shard_folder_each_read_their_own_files(count: int, cli, tmp_path: Path) -> None:
    shards = shard_folder(tmp_path, files=6)
    settings = {"data": {"source": str(shards), "limit": None}, "training": {"epochs": 3, "batch_size": 48}}
    config = write_config(tmp_path, settings)
    single = cli("train", config, "--runs-dir", tmp_path / "single", "--quiet")
    assert single.exit_code == 0, single.output
    alone = last_line(single.stdout)
    alone_read = json.loads((alone / "run.json").read_text())["reading"]
    assert alone_read["files"] == 6

    workers = start_workers(tmp_path, count, str(config), "--runs-dir", str(tmp_path / "runs"), *WORKER)
    outputs = finish(workers)
    run = last_line(outputs[0])
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed"
    assert info["worker_input"]["files_per_worker"] == "own" and info["worker_input"]["workers"] == count
    assert sum(info["worker_input"]["training_rows"]) == info["data"]["train"]
    reads = [info["reading"]] + [
        {"files": int(found[0]), "rows": int(found[1].replace(",", ""))}
        for out in outputs[1:]
        for found in re.findall(r"read (\d+) of 6 shard files \(([\d,]+) rows", out)
    ]
    assert len(reads) == count and all(read["files"] == 6 // count for read in reads)
    # Rows decoded: about 1/N of one process's each (a little more: see README "Scaling out").
    assert all(read["rows"] < 1.4 * alone_read["rows"] / count for read in reads), (reads, alone_read)
    # The chief's report gathered every worker's rows: the single process's rows, in its order.
    assert (run / "errors.csv").read_text().split("\n")[0] == (alone / "errors.csv").read_text().split("\n")[0]
    rows = [line.split(",")[1] for line in (run / "errors.csv").read_text().splitlines()[1:]]
    assert rows == [line.split(",")[1] for line in (alone / "errors.csv").read_text().splitlines()[1:]]
    # The same global batches, each worker's rows in its own order: the curve agrees to tolerance.
    assert losses(run) == pytest.approx(losses(alone), rel=0.15)
    assert losses(run)[-1] < losses(run)[0]
    assert not list((tmp_path / "tmp").iterdir())


def wait_for_epoch_of(process: subprocess.Popen, epoch: int, epochs: int) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.split()[:2] == ["epoch", f"{epoch}/{epochs}"]:
            return
    raise AssertionError(f"training ended before epoch {epoch}")


@pytest.mark.slow
def test_a_lost_worker_or_chief_stops_the_cluster_and_a_resume_completes_every_epoch_once(tmp_path: Path) -> None:
    shards = shard_folder(tmp_path, files=4)
    config = write_config(
        tmp_path,
        {"data": {"source": str(shards), "limit": 400}, "training": {"epochs": 8, "batch_size": 8}},
        name="long.yaml",
    )
    runs = tmp_path / "runs"
    workers = start_workers(tmp_path, 2, str(config), "--runs-dir", str(runs), "--quiet", *WORKER[1:])
    wait_for_epoch_of(workers[0].process, 2, 8)
    workers[1].process.kill()  # kill -9: no chance to say goodbye
    _, err = workers[0].output(timeout=120)
    assert workers[0].process.returncode == 4, err
    assert err.strip().splitlines()[-1].startswith("error: the cluster lost worker 1")
    (run,) = runs.iterdir()
    assert f"aecli train --resume {run}" in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted"

    # Every worker starts again on the run; this time the chief dies.
    workers = start_workers(tmp_path, 2, "--resume", str(run), "--quiet")
    wait_for_epoch_of(workers[0].process, 5, 8)
    workers[0].process.kill()
    _, err = workers[1].output(timeout=120)
    assert workers[1].process.returncode == 4, err
    assert err.strip().splitlines()[-1].startswith("error: the cluster lost worker 0 (it stopped answering")
    finished = json.loads((run / "checkpoints" / "state.json").read_text())["epoch"]
    assert 4 <= finished < 8

    workers = start_workers(tmp_path, 2, "--resume", str(run), "--quiet")
    outputs = finish(workers)
    assert f"resumed after epoch {finished}" in outputs[0]
    with (run / "history.csv").open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(1, 9))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and len(info["resumed"]) == 2
    # The scratch folder of the worker killed first was removed when that worker started again
    # (TensorFlow's own temporary files of killed processes stay: their cleanup never ran).
    assert not list((tmp_path / "tmp").glob("aecli-worker-*"))


@pytest.mark.slow
def test_a_cluster_of_one_worker_trains(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"training": {"epochs": 2}})
    spec = {"cluster": {"worker": [f"localhost:{free_port()}"]}, "task": {"type": "worker", "index": 0}}
    done = subprocess.run(
        [sys.executable, "-m", "aecli", "train", str(config), "--runs-dir", str(tmp_path / "runs"), *WORKER],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CONFIG": json.dumps(spec)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(losses(last_line(done.stdout))) == 2
