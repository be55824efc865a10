"""tf.distribute over 2 logical CPUs (mirrored), the cluster settings (TF_CONFIG) and mixed precision; a
cluster of local worker processes training is test_cluster.py's."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
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
