"""tf.distribute (mirrored over 2 logical CPUs, multi-worker over 2 local processes) and mixed precision."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from aecli.config import load_config
from aecli.distribute import read_cluster_task
from aecli.errors import ConfigError
from tests.conftest import write_config
from tests.test_resilience import wait_for_epoch

# Runs the aecli CLI in a process whose CPU is split into 2 logical devices, as tests of
# tf.distribute on machines without GPUs do; it must happen before TensorFlow starts.
TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from aecli.cli import main
sys.argv = ["aecli", *sys.argv[1:]]
main()
"""
MIRRORED = ["--set", "training.distribute.strategy=mirrored", "--set", "training.distribute.devices=[/cpu:0,/cpu:1]"]


def losses(run: Path) -> list[float]:
    with (run / "history.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def last_line(text: str) -> Path:
    return Path(text.strip().splitlines()[-1])


def two_cpu_aecli(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "two_cpus.py"
    script.write_text(TWO_CPUS)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.slow
def test_mirrored_over_two_devices_matches_one_device(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config()
    process = two_cpu_aecli(tmp_path, "train", str(config), "--runs-dir", str(tmp_path / "mirrored"), *MIRRORED)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    mirrored = last_line(out)
    assert json.loads((mirrored / "run.json").read_text())["replicas"] == 2

    single = cli("train", config, "--runs-dir", tmp_path / "single", "--quiet")
    assert single.exit_code == 0, single.output
    # The same global batches: per-replica gradients of half batches, all-reduced, equal the
    # one-device gradient up to float rounding (and XLA, which only the one-device run uses).
    assert losses(mirrored) == pytest.approx(losses(last_line(single.stdout)), rel=5e-3)
    assert losses(mirrored)[-1] < losses(mirrored)[0]


@pytest.mark.slow
def test_mirrored_run_interrupted_then_resumed_under_the_strategy(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"data": {"limit": 1500}, "training": {"epochs": 10, "batch_size": 8}}, name="long.yaml"
    )
    runs = tmp_path / "runs"
    process = two_cpu_aecli(tmp_path, "train", str(config), "--runs-dir", str(runs), "--quiet", *MIRRORED)
    wait_for_epoch(process, 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    (run,) = runs.iterdir()
    finished = json.loads((run / "checkpoints" / "state.json").read_text())["epoch"]
    assert 1 <= finished < 10  # epoch 2 is printed just before its checkpoint is written

    resumed = two_cpu_aecli(tmp_path, "train", "--resume", str(run), "--quiet")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed after epoch {finished}" in out
    with (run / "history.csv").open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(1, 11))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["replicas"] == 2


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
@pytest.mark.parametrize("count", [2, 3])
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
        {"data": {"source": str(shards), "limit": 800}, "training": {"epochs": 8, "batch_size": 8}},
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


def test_mixed_precision_is_refused_without_a_gpu(cli, tiny_config, tmp_path: Path) -> None:
    result = cli("train", tiny_config({"training": {"mixed_precision": True}}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "mixed_precision: force" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_resumed_mixed_precision_run_keeps_its_loss_scaled_optimizer_state(cli, tiny_config, tmp_path: Path) -> None:
    import json

    import keras

    from aecli.models import dtype_policy
    from aecli.trained_run import load_model

    config = tiny_config({"training": {"mixed_precision": "force", "epochs": 2}})
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run = last_line(result.stdout)

    def optimizer_steps() -> tuple[str, int]:
        with dtype_policy(True):
            optimizer = load_model(run / "checkpoints" / "last.keras").optimizer
        return type(optimizer).__name__, int(keras.ops.convert_to_numpy(optimizer.iterations))

    kind, after_two = optimizer_steps()
    assert kind == "LossScaleOptimizer" and after_two > 0
    # As if killed after epoch 1 (with epoch 2's weights on disk): the resume trains one more epoch.
    state_path = run / "checkpoints" / "state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "epoch": 1, "history": state["history"][:1]}))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    resumed = cli("train", "--resume", run, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert optimizer_steps() == ("LossScaleOptimizer", after_two + after_two // 2)  # continued, not restarted


@pytest.mark.parametrize("kind", ["dense", "vae"])
def test_forced_mixed_precision_computes_in_float16_with_float32_outputs(
    kind: str, cli, tiny_config, tmp_path: Path
) -> None:
    import keras

    config = tiny_config({"model": {"kind": kind}, "training": {"mixed_precision": "force", "epochs": 2}})
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    assert keras.config.dtype_policy().name == "float32"  # restored for whatever runs next
    run = last_line(result.stdout)
    assert all(value < 1e3 for value in losses(run))
    decoder = keras.saving.load_model(run / "decoder.keras")
    encoder = keras.saving.load_model(run / "encoder.keras")
    assert decoder.get_layer("reconstruction").dtype_policy.name == "float32"
    assert decoder.get_layer("decoder_dense_2").dtype_policy.name == "mixed_float16"
    code = "z_mean" if kind == "vae" else "latent"
    assert encoder.get_layer(code).dtype_policy.name == "float32"


def test_tf_config_mistakes_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="set TF_CONFIG on every worker"):
        read_cluster_task({})
    with pytest.raises(ConfigError, match="not a cluster spec"):
        read_cluster_task({"TF_CONFIG": "{cluster: oops"})
    with pytest.raises(ConfigError, match="task worker:2 is not in its cluster"):
        read_cluster_task(
            {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 2}})}
        )


@pytest.mark.parametrize(
    ("cluster", "message"),
    [({"worker": "a:1"}, "must be a list"), ({"worker": ["nohost:abc"]}, "is not host:port")],
)
def test_tf_config_addresses_are_checked(cluster: dict, message: str) -> None:
    spec = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    with pytest.raises(ConfigError, match=message):
        read_cluster_task({"TF_CONFIG": spec})


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


@pytest.mark.parametrize(
    ("cluster", "task", "chief"),
    [
        ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
    ],
)
def test_the_chief_is_named_chief_or_else_worker_0(cluster: dict, task: tuple[str, int], chief: bool) -> None:
    spec = {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}
    assert read_cluster_task({"TF_CONFIG": json.dumps(spec)}).is_chief is chief


def test_distribute_settings_are_validated() -> None:
    assert load_config(None, ["training.distribute=mirrored"]).training.distribute.strategy == "mirrored"
    with pytest.raises(ConfigError, match="needs runtime.backend tensorflow"):
        load_config(None, ["training.distribute=multi_worker", "runtime.backend=jax"])
    with pytest.raises(ConfigError, match="devices applies to strategy mirrored only"):
        load_config(None, ["training.distribute.devices=[/gpu:0]"])
    # Denoising trains on a cluster: each worker's trainer corrupts its own batches.
    assert load_config(None, ["training.distribute=multi_worker", "training.noise=true"]).training.noise is not None


def test_unknown_mirrored_devices_are_named(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config({"training": {"distribute": {"strategy": "mirrored", "devices": ["/gpu:7"]}}})
    result = cli("train", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "no device /gpu:7 here" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_compare_refuses_multi_worker(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config({"training": {"distribute": "multi_worker"}})
    result = cli("compare", config, "--vary", "optimizer.name=sgd,adam", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "cannot tear that down to train the next cell" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_cluster_with_a_chief_numbers_the_chief_first_and_names_every_task() -> None:
    spec = {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    task = read_cluster_task({"TF_CONFIG": json.dumps(spec)})
    assert (task.pipeline, task.workers, task.names) == (2, 3, ("chief", "worker 0", "worker 1"))
    plain = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    assert read_cluster_task({"TF_CONFIG": json.dumps(plain)}).pipeline == 1


def test_a_lost_peer_becomes_a_one_line_cluster_error_and_other_errors_pass_through() -> None:
    import tensorflow as tf

    from aecli.distribute import ClusterError, Placement, cluster_errors

    cluster = Placement(multi_worker=True, workers=2)
    lost = (
        "Collective ops is aborted by: Error reported from /job:worker/task:0: The following tasks are "
        "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed."
    )
    with pytest.raises(ClusterError) as caught, cluster_errors(cluster, "do X"):
        raise tf.errors.UnavailableError(None, None, lost)
    assert str(caught.value) == "the cluster lost worker 1 (it stopped answering; its own output says why); do X"
    assert caught.value.exit_code == 4
    reset = (
        "{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/replica:0/task:1/device:CPU:0}} "
        "Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error information from "
        "remote target /job:worker/replica:0/task:0 while calling /tensorflow.WorkerService/CompleteInstance"
    )
    with pytest.raises(ClusterError, match="^the cluster lost worker 0 "), cluster_errors(cluster, "do X"):
        raise tf.errors.UnavailableError(None, None, reset)  # the chief gone: its connection reset
    # e.g. storage: not a lost peer
    with pytest.raises(tf.errors.UnavailableError), cluster_errors(cluster, "do X"):
        raise tf.errors.UnavailableError(None, None, "file system unavailable")
    # one process: nothing to translate
    with pytest.raises(tf.errors.UnavailableError), cluster_errors(Placement(), "do X"):
        raise tf.errors.UnavailableError(None, None, lost)


def test_the_cluster_trainer_draws_fresh_training_noise_and_fixed_validation_noise() -> None:
    import keras
    import numpy as np

    from aecli.layers import MultiWorkerTrainer

    inputs = keras.Input((16,))
    trainer = MultiWorkerTrainer(keras.Model(inputs, keras.layers.Dense(16)(inputs)), noise="mask:0.5")
    trainer.compile(optimizer="adam", loss="mse")
    clean = np.random.default_rng(0).uniform(0.1, 1.0, (64, 16)).astype("float32")
    noisy, target = (np.asarray(t) for t in trainer._with_noise(clean, training=True))
    np.testing.assert_array_equal(target, clean)  # the target stays clean
    masked = noisy == 0
    assert 0.4 < masked.mean() < 0.6 and np.array_equal(noisy[~masked], clean[~masked])
    trainer.optimizer.iterations.assign_add(1)  # the next step: fresh noise
    assert not np.array_equal(np.asarray(trainer._with_noise(clean, training=True)[0]), noisy)
    first = np.asarray(trainer._with_noise(clean, training=False)[0])
    trainer.optimizer.iterations.assign_add(1)  # validation: the same batch, the same noise
    np.testing.assert_array_equal(np.asarray(trainer._with_noise(clean, training=False)[0]), first)
    assert not np.array_equal(np.asarray(trainer._with_noise(clean[::-1], training=False)[0]), first[::-1])
    assert MultiWorkerTrainer.from_config(trainer.get_config()).noise == "mask:0.5"
