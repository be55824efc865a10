"""Interrupts, kills, divergence and resume, with real `aecli train` subprocesses."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_config

pytestmark = pytest.mark.slow

EPOCHS = 12


def start_training(folder: Path, epochs: int = EPOCHS) -> subprocess.Popen:
    config = write_config(
        folder,
        {
            "data": {"limit": 1500},
            "model": {"encoder": [64], "latent_dim": 8},
            "training": {"epochs": epochs, "batch_size": 8, "steps_per_execution": 8},
        },
    )
    return subprocess.Popen(
        [sys.executable, "-m", "aecli", "train", str(config), "--runs-dir", str(folder / "runs"), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell that starts the test suite in the background leaves SIGINT ignored, and
        # children inherit that (the CI failure this fixes); a terminal user's aecli has it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_epoch(process: subprocess.Popen, epoch: int) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + 180
    for line in process.stdout:
        if line.strip().startswith(f"epoch {epoch:>2}/"):
            return
        assert time.monotonic() < deadline, "training did not reach the epoch in time"
    raise AssertionError(f"training ended before epoch {epoch}: {process.stderr.read() if process.stderr else ''}")


def only_run(folder: Path) -> Path:
    (run,) = list((folder / "runs").iterdir())
    return run


def history_epochs(run: Path) -> list[int]:
    with (run / "history.csv").open() as handle:
        return [int(float(row["epoch"])) for row in csv.DictReader(handle)]


def test_kill_9_mid_epoch_then_resume_completes(cli, tmp_path: Path) -> None:
    process = start_training(tmp_path)
    wait_for_epoch(process, 3)
    time.sleep(0.05)  # somewhere inside epoch 4
    process.kill()
    process.wait()
    run = only_run(tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # killed: nothing could mark it
    assert not (run / "model.keras").exists()
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    # the first epoch is always written; later ones at most every SPACING x a write's duration
    # (aecli/checkpoints.py): a kill -9 loses the epochs since the last write
    assert 1 <= state["epoch"] <= 3

    resumed = cli("train", "--resume", run, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed after epoch {state['epoch']}" in resumed.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"][0]["from_epoch"] == state["epoch"]
    assert history_epochs(run) == list(range(1, EPOCHS + 1))  # no gaps, no duplicates
    assert json.loads((run / "metrics.json").read_text())["training"]["epochs_run"] == EPOCHS
    import keras

    for part in ("model", "encoder", "decoder"):
        keras.saving.load_model(run / f"{part}.keras")

    again = cli("train", "--resume", run)
    assert again.exit_code == 0 and "already completed" in again.stdout


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_marks_the_run_and_says_how_to_resume(tmp_path: Path, sent: int, code: int) -> None:
    process = start_training(tmp_path, epochs=60)  # long enough that it cannot finish first
    wait_for_epoch(process, 2)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    run = only_run(tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert f"aecli train --resume {run}" in stderr
    assert (run / "checkpoints" / "last.keras").is_file()


def test_resume_without_any_finished_epoch_starts_over(cli, tiny_config, tmp_path: Path) -> None:
    trained = cli("train", tiny_config({"training": {"epochs": 2}}), "--runs-dir", tmp_path / "runs", "--quiet")
    run = Path(trained.stdout.strip().splitlines()[-1])
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    resumed = cli("train", "--resume", run, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed after epoch 0" in resumed.stdout and history_epochs(run) == [1, 2]


def test_divergence_fails_with_exit_1_and_keeps_the_best_checkpoint(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config(
        {
            "model": {"activation": "tanh", "output_activation": "linear"},
            "optimizer": {"name": "sgd", "learning_rate": 1e6},
            "training": {"epochs": 5},
        }
    )
    result = cli("train", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: training diverged") and "lower optimizer.learning_rate" in result.stderr
    run = only_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and not (run / "model.keras").exists()


def test_a_diverged_epoch_never_replaces_a_good_checkpoint(tmp_path: Path) -> None:
    import keras

    from aecli.checkpoints import EpochCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    callback = EpochCheckpoint(tmp_path, "val_loss", [], (True, True), None, every_epoch=True)
    callback.set_model(model)
    callback.set_params({"epochs": 3})
    callback.on_epoch_end(0, {"val_loss": 0.5, "loss": 0.5})
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    model.layers[0].kernel.assign(model.layers[0].kernel * 10)
    callback.on_epoch_end(1, {"val_loss": float("nan"), "loss": float("nan")})
    callback.on_epoch_end(2, {"val_loss": 0.9, "loss": 0.9})  # worse: last moves on, best stays
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert after["best.keras"] == digest["best.keras"] and after["last.keras"] != digest["last.keras"]
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 3


def test_signal_handlers_leave_a_flag_and_respect_an_ignored_ctrl_c() -> None:
    from aecli.interrupts import Terminated, interrupts_as_exceptions, pending_interrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_as_exceptions():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job stays deaf to Ctrl-C
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler runs between bytecodes; this is never reached in full
            assert pending_interrupt() is Terminated  # what the training loop checks after each step
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with interrupts_as_exceptions():
            assert pending_interrupt() is None
            with pytest.raises(KeyboardInterrupt) as raised:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            assert raised.type is KeyboardInterrupt and pending_interrupt() is KeyboardInterrupt
        assert pending_interrupt() is None  # a later training in this process is not stopped by it
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_stops_a_slow_conv_run_within_seconds(tmp_path: Path) -> None:
    """A block of 62 steps of ~0.15 s (conv under forced XLA, the slowest case on a CPU) would keep
    the signal waiting for ~9 s; the block is cut into calls of about a second instead."""
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (10_000, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    config = write_config(
        tmp_path,
        {
            "data": {"source": str(tmp_path / "images.npy"), "validation_split": 0.0},
            "model": {"kind": "conv", "filters": [32, 32], "downsample": "maxpool", "latent_dim": 64},
            "training": {"epochs": 50, "batch_size": 128, "jit_compile": True, "checkpoint": {"best": False}},
        },
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "aecli", "train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_for_epoch(process, 1)
    time.sleep(0.5)  # early in epoch 2's block
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert time.monotonic() - sent < 8  # (the whole block: over 9 s alone, twice that beside another test worker)
    assert json.loads((only_run(tmp_path) / "run.json").read_text())["status"] == "interrupted"


def test_an_interrupt_during_a_checkpoint_write_waits_for_the_write() -> None:
    from aecli.interrupts import deferred_interrupts, interrupts_as_exceptions

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = []
    try:
        with interrupts_as_exceptions(), pytest.raises(KeyboardInterrupt), deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler has run by now: it only left the flag
            finished.append(True)
        assert finished == [True]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_that_native_code_swallowed_still_stops_score_and_evaluate(
    cli, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorFlow can swallow the KeyboardInterrupt a Ctrl-C raises inside it ("Exception ignored
    in ..."); the handler's flag still stops the command before anything is moved into place."""
    import aecli.commands.evaluate
    import aecli.commands.score
    import aecli.interrupts

    def swallowing(original):  # the model call returns normally, the interrupt only left its flag
        def call(*args, **kwargs):
            monkeypatch.setattr(aecli.interrupts, "_pending", KeyboardInterrupt)
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(aecli.commands.score, "predict_fixed", swallowing(aecli.commands.score.predict_fixed))
    result = cli("score", trained_run, "digits", "--out", tmp_path / "scores.csv")
    assert result.exit_code == 130 and "interrupted: nothing written" in result.output
    assert not (tmp_path / "scores.csv").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(aecli.commands.evaluate, "predict_fixed", swallowing(aecli.commands.evaluate.predict_fixed))
    result = cli("evaluate", trained_run, "--out", tmp_path / "eval")
    assert result.exit_code == 130 and "no evaluation folder written" in result.output
    assert list(tmp_path.iterdir()) == []
