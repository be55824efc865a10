"""`make bench-full`, time series: the Conv1D autoencoder of configs/nab_conv1d.yaml (the Keras example
"Timeseries anomaly detection using an Autoencoder") against Keras's plain `fit`/`predict` on the
same windows, and what it finds in the jump series.

    python benchmarks/bench_series.py [--epochs 6] [--rounds 2] [--out benchmarks/results]

Training: windows/s of the training stretch per steady epoch (validation included), each side in a
fresh process; aecli: `aecli train` with the config's settings; plain: the model aecli builds (same
initial weights), `compile` and `fit(x, x, batch_size=128, validation_data)` with Keras's defaults.
Scoring: windows/s of reconstructing every window of art_daily_jumpsup.csv, warm, in one process:
aecli's evaluation path against `model.predict` (its default batch of 32). Writes series.json and
series.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_kinds import steady  # the same steady-epoch rule as the other kinds (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
NAB = ROOT.parent / "shared" / "data" / "nab-example"
CONFIG = ROOT / "configs" / "nab_conv1d.yaml"


def settings(epochs: int) -> list[str]:
    return [f"training.epochs={epochs}", "training.early_stopping=null"]


def worker_aecli(epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aecli-bench-series-") as runs:
        command = [str(ROOT / ".venv" / "bin" / "aecli"), "train", str(CONFIG), "--quiet", "--runs-dir", runs]
        for setting in settings(epochs):
            command += ["--set", setting]
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
        run = next(Path(runs).iterdir())
        lines = (run / "history.csv").read_text().splitlines()
        column = lines[0].split(",").index("seconds")
        info = json.loads((run / "run.json").read_text())
        evaluated = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "aecli"), "evaluate", str(run), "--data", str(NAB / "art_daily_jumpsup.csv")],
            check=True,
            capture_output=True,
            text=True,
        )
        out = Path(evaluated.stdout.strip().splitlines()[-1])
        found = json.loads((out / "metrics.json").read_text())["anomalies_in_time"]
    return {
        "seconds": [float(line.split(",")[column]) for line in lines[1:]],
        "train_windows": info["data"]["train"],
        "loss": float(lines[-1].split(",")[1]),
        "ranges": found["ranges"],
    }


def worker_plain(epochs: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from aecli.backend import import_tensorflow
    from aecli.config import load_config

    import_tensorflow()
    import keras

    from aecli.data import load_dataset, load_for_model
    from aecli.evaluation import predict_batched
    from aecli.models import build_autoencoder
    from aecli.training import build_loss, build_optimizer, seed_everything

    cfg = load_config(CONFIG, settings(epochs))
    data = load_dataset(cfg.data, seed=cfg.training.seed)
    seed_everything(cfg.training.seed)
    model = build_autoencoder(cfg.model, data.sample_shape, cfg.loss.name).model
    model.compile(optimizer=build_optimizer(cfg.optimizer), loss=build_loss(cfg.loss))
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    history = model.fit(
        data.x_train,
        data.x_train,
        batch_size=cfg.training.batch_size,
        epochs=epochs,
        validation_data=(data.x_val, data.x_val),
        verbose=0,
        callbacks=[Timer()],
    )
    jump = load_for_model(
        load_config(CONFIG, [f"data.source={NAB / 'art_daily_jumpsup.csv'}"]).data, data.sample_shape, data.scaling
    )
    scoring = {}
    for name, call in (
        ("plain", lambda: model.predict(jump.x, verbose=0)),
        ("aecli", lambda: predict_batched(model, jump.x)),
    ):
        call()  # warm: compiled once
        times = []
        for _ in range(5):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        scoring[name] = len(jump.x) / statistics.median(times)
    return {
        "seconds": seconds,
        "train_windows": len(data.x_train),
        "loss": float(history.history["loss"][-1]),
        "scoring": scoring,
        "scored_windows": len(jump.x),
    }


def run_worker(kind: str, epochs: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--epochs", str(epochs)]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps((worker_aecli if args.worker == "aecli" else worker_plain)(args.epochs)))
        return
    if not NAB.exists():
        raise SystemExit("needs ../shared/data/nab-example")
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "aecli": []}
    for _ in range(args.rounds):
        for side in runs:
            runs[side].append(run_worker(side, args.epochs))
    results = {side: {"steady": steady(side_runs), "runs": side_runs} for side, side_runs in runs.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "series.json").write_text(json.dumps(results, indent=2))
    (args.out / "series.md").write_text(render(results, args))
    print(render(results, args))


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    plain, aecli = results["plain"], results["aecli"]
    windows = aecli["runs"][0]["train_windows"]
    plain_rate, aecli_rate = windows / plain["steady"], windows / aecli["steady"]
    scoring = [run["scoring"] for run in plain["runs"]]
    score_plain = statistics.median(s["plain"] for s in scoring)
    score_aecli = statistics.median(s["aecli"] for s in scoring)
    losses = (
        ", ".join(f"{run['loss']:.4f}" for run in plain["runs"]),
        ", ".join(f"{run['loss']:.4f}" for run in aecli["runs"]),
    )
    ranges = "; ".join(
        ", ".join(f"{r['start']} to {r['end']}" for r in run["ranges"]) or "none" for run in aecli["runs"]
    )
    return "\n".join(
        [
            "## Time series: the Conv1D autoencoder on NAB windows",
            "",
            f"Command: `python benchmarks/bench_series.py --epochs {args.epochs} --rounds {args.rounds}` (part of "
            f"`make bench-full`). Data: `configs/nab_conv1d.yaml` (windows of 288 steps of "
            "../shared/data/nab-example/art_daily_small_noise.csv; "
            f"{windows:,} training windows, stride 1), batch 128, Adam, MSE. Training: steady windows/s per epoch "
            "(validation included), each side in a fresh process, alternating; plain = the same model and initial "
            "weights under Keras's `compile`/`fit` defaults. Scoring: every window of art_daily_jumpsup.csv "
            f"({plain['runs'][0]['scored_windows']:,}), warm, median of five calls: aecli's evaluation path "
            "(`predict_batched`) against `model.predict`.",
            "",
            "| measurement | plain Keras | aecli | aecli / plain |",
            "|---|---|---|---|",
            f"| training, windows/s (steady epoch) | {plain_rate:,.0f} | {aecli_rate:,.0f} | "
            f"{aecli_rate / plain_rate:.2f}x |",
            f"| scoring, windows/s | {score_plain:,.0f} | {score_aecli:,.0f} | {score_aecli / score_plain:.2f}x |",
            f"| training loss after {args.epochs} epochs, by round | {losses[0]} | {losses[1]} | |",
            "",
            f"Flagged ranges in art_daily_jumpsup.csv after {args.epochs} epochs (`aecli evaluate`, threshold = "
            f"the largest training-window MAE, points: all), by round: {ranges}.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
