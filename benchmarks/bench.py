"""`make bench`: aecli's fast path against plain Keras, measured in one run on this machine.

Each training measurement runs in its own subprocess (fresh TensorFlow, its own peak RSS),
alternating plain Keras and aecli to cancel machine drift. Data: the real MNIST test images
from ../shared/data/mnist (9,000 tiled to 60,000 training rows, the last 1,000 held out for
the test MSE), or synthetic MNIST-shaped data when that folder is absent.

    python benchmarks/bench.py [--rounds 4] [--epochs 5] [--out benchmarks/results]

Writes results.json and BENCHMARKS.md (the table, with the command that produced it).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
TRAIN_ROWS = 60_000
WIDTHS = (128, 64, 32, 64, 128)  # the reference model: Dense 784-128-64-32-64-128-784


def load_data() -> tuple[np.ndarray, np.ndarray, str]:
    sys.path.insert(0, str(ROOT))
    from aecli.data.files import read_idx

    if MNIST.exists():
        images = read_idx(MNIST).reshape(-1, 784).astype(np.float32) / 255.0
        source = f"MNIST test images (../shared/data/mnist), 9,000 tiled to {TRAIN_ROWS:,} rows"
    else:
        rng = np.random.default_rng(0)
        images = (rng.random((10_000, 784)) < 0.2).astype(np.float32)
        source = f"synthetic MNIST-shaped data (no ../shared/data/mnist), tiled to {TRAIN_ROWS:,} rows"
    train, test = images[:9000], images[9000:]
    reps = -(-TRAIN_ROWS // len(train))
    return np.tile(train, (reps, 1))[:TRAIN_ROWS], test, source


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- workers (one per subprocess)


def worker_plain(epochs: int, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Plain Keras exactly as a tutorial writes it: Sequential halves, compile, fit with defaults."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    x, test, _ = load_data()
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((784,))] + [keras.layers.Dense(w, activation="relu") for w in WIDTHS[:3]])
    decoder = keras.Sequential(
        [keras.Input((32,))]
        + [keras.layers.Dense(w, activation="relu") for w in WIDTHS[3:]]
        + [keras.layers.Dense(784, activation="sigmoid")]
    )
    model = keras.Sequential([encoder, decoder])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    record = EpochRecord(model, test)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            record.add(time.perf_counter() - self.started)

    model.fit(x, x, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[Timer()])
    return record.result()


def worker_aecli(epochs: int, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """aecli's own training path with its defaults (tf.data pipeline, steps_per_execution, XLA)."""
    sys.path.insert(0, str(ROOT))
    import tempfile

    from aecli.backend import select_backend
    from aecli.config import validate_config

    backend = os.environ.get("AECLI_BENCH_BACKEND", "tensorflow")
    select_backend(backend)
    from aecli.data import Scaling
    from aecli.models import build_autoencoder
    from aecli.training import fit_autoencoder, seed_everything

    x, test, _ = load_data()
    # Rows as aecli's loader hands them to training: scaled into a buffer TensorFlow can share.
    x = Scaling("none", np.zeros((), np.float32), np.ones((), np.float32)).apply(x)
    config = validate_config(
        {
            "model": {
                "encoder": list(WIDTHS[:2]),
                "latent_dim": 32,
                "latent_activation": "relu",
                "decoder": list(WIDTHS[3:]),
                "output_activation": "sigmoid",
            },
            "optimizer": {"name": "adam", "learning_rate": float(os.environ.get("AECLI_BENCH_LR", "1e-3"))},
            "loss": "mse",
            "data": {"validation_split": 0},
            "training": {
                "epochs": epochs,
                "batch_size": batch_size,
                "seed": seed,
                "lr_schedule": json.loads(os.environ.get("AECLI_BENCH_SCHEDULE", '"constant"')),
                # auto (the default): XLA for this dense model on TensorFlow and JAX, no torch.compile on PyTorch
                "jit_compile": "auto" if os.environ.get("AECLI_BENCH_JIT", "1") == "1" else False,
            },
            "runtime": {"backend": backend},
        }
    )
    seed_everything(seed)
    model = build_autoencoder(config.model, (784,)).model
    record = EpochRecord(model, test)

    class Reporter:
        def epoch_started(self, *args: Any) -> None: ...
        def step_finished(self, *args: Any) -> None: ...
        def training_finished(self) -> None: ...
        def epoch_finished(self, epoch: int, epochs: int, row: dict[str, float]) -> None:
            record.add(row["seconds"])

    fit_autoencoder(
        model, x, None, config.training, config.optimizer, config.loss, Path(tempfile.mkdtemp()), Reporter()
    )
    return record.result()


def worker_torch(epochs: int, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """The same model in a plain PyTorch loop, as PyTorch's tutorials write one: nn.Sequential,
    a shuffling DataLoader over a TensorDataset, Adam 1e-3, MSE, one optimizer step per batch."""
    import torch
    from torch import nn

    x, test, _ = load_data()
    torch.manual_seed(seed)
    sizes = (784, *WIDTHS)
    layers: list[nn.Module] = []
    for width_in, width_out in itertools.pairwise(sizes):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(sizes[-1], 784), nn.Sigmoid())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    rows = torch.from_numpy(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(rows), batch_size=batch_size, shuffle=True)
    seconds, test_mse, held_out = [], [], torch.from_numpy(test)
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for (batch,) in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch), batch)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
        model.eval()
        with torch.no_grad():
            test_mse.append(float(loss_fn(model(held_out), held_out)))
    return {"seconds": seconds, "test_mse": test_mse, "peak_rss_mib": peak_rss_mib()}


class EpochRecord:
    """Per-epoch wall seconds (the fit's own timing) and the held-out MSE after each epoch."""

    def __init__(self, model: Any, test: np.ndarray) -> None:
        self.model, self.test = model, test
        self.seconds: list[float] = []
        self.test_mse: list[float] = []

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)
        prediction = np.asarray(self.model.predict_on_batch(self.test))
        self.test_mse.append(float(np.mean((prediction - self.test) ** 2)))

    def result(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "test_mse": self.test_mse, "peak_rss_mib": peak_rss_mib()}


def worker_baseline() -> dict[str, Any]:
    """Peak RSS of a process that only imports TensorFlow and Keras and holds the training array."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    x, _, _ = load_data()
    keras.ops.convert_to_tensor(x[:32]) + tf.constant(0.0)
    return {"peak_rss_mib": peak_rss_mib()}


def worker_eval() -> dict[str, Any]:
    """Evaluation throughput on 10,000 rows: model.predict defaults vs aecli's batched direct calls."""
    sys.path.insert(0, str(ROOT))
    from aecli.backend import import_tensorflow

    import_tensorflow()
    import keras

    from aecli.evaluation import predict_batched

    _x, test, _ = load_data()
    rows = np.concatenate([test] * 10)[:10_000]
    inputs = keras.Input((784,))
    hidden = inputs
    for width in WIDTHS:
        hidden = keras.layers.Dense(width, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(784, activation="sigmoid")(hidden))
    results: dict[str, list[float]] = {"predict": [], "aecli": []}
    model.predict(rows[:64], verbose=0)
    predict_batched(model, rows[:64])
    for _ in range(7):
        for name, call in (
            ("predict", lambda: model.predict(rows, verbose=0)),
            ("aecli", lambda: predict_batched(model, rows)),
        ):
            started = time.perf_counter()
            call()
            results[name].append(len(rows) / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in results.items()}


def worker_floor(batch_size: int) -> dict[str, Any]:
    """Seconds per epoch spent in sgemm alone at the model's real shapes (forward + both backward products)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    dims = (784, *WIDTHS, 784)
    shapes = []
    for n_in, n_out in itertools.pairwise(dims):
        shapes += [(batch_size, n_in, n_out), (n_in, batch_size, n_out), (batch_size, n_out, n_in)]
    pairs = [(tf.random.uniform((m, k)), tf.random.uniform((k, n))) for m, k, n in shapes]

    @tf.function(jit_compile=True)
    def products() -> Any:
        return [tf.linalg.matmul(a, b) for a, b in pairs]

    products()
    repeats = 200
    started = time.perf_counter()
    for _ in range(repeats):
        products()
    per_step = (time.perf_counter() - started) / repeats
    flops = sum(2 * m * k * n for m, k, n in shapes)
    steps = -(-TRAIN_ROWS // batch_size)
    return {"seconds_per_epoch": per_step * steps, "gflops": flops / per_step / 1e9}


# ---------------------------------------------------------------- the parent


def run_worker(
    kind: str,
    *args: Any,
    backend: str = "tensorflow",
    jit: bool = True,
    learning_rate: float = 1e-3,
    schedule: dict[str, Any] | None = None,
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, *map(str, args)]
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "AECLI_BENCH_BACKEND": backend,
        "AECLI_BENCH_JIT": str(int(jit)),
        "AECLI_BENCH_LR": str(learning_rate),
        "AECLI_BENCH_SCHEDULE": json.dumps(schedule or "constant"),
    }
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wall(command: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs="*")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--sweep", action="store_true", help="only the learning-rate/batch sweep (sweep.md)")
    parser.add_argument("--render", action="store_true", help="only rewrite BENCHMARKS.md from results.json")
    parser.add_argument("--quick", action="store_true", help="2 rounds, and 1 round of the PyTorch pair (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    if args.worker:
        kind, *rest = args.worker
        workers: dict[str, Callable[..., dict[str, Any]]] = {
            "plain": worker_plain,
            "aecli": worker_aecli,
            "eval": worker_eval,
            "floor": worker_floor,
            "baseline": worker_baseline,
            "torch": worker_torch,
        }
        print(json.dumps(workers[kind](*map(int, rest))))
        return

    if args.sweep:
        sweep(args)
        return
    if args.render:  # BENCHMARKS.md again from the saved results, e.g. after another script's rerun
        saved = json.loads((args.out / "results.json").read_text())
        vars(args).update(saved.get("args", {}))
        write_benchmarks(saved, args)
        return
    _, _, source = load_data()
    print(f"data: {source}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "aecli": [], "aecli-jax": []}
    kinds = [("plain", "plain", "tensorflow"), ("aecli", "aecli", "tensorflow")]
    if importlib.util.find_spec("jax") is not None:
        kinds.append(("aecli-jax", "aecli", "jax"))
    for round_number in range(args.rounds):
        for label, kind, backend in kinds:  # alternate, so drift hits every side alike
            # aecli runs extra epochs, so time-to-target can be measured when epoch 5 lands short
            epochs = args.epochs if kind == "plain" else args.epochs + 3
            # each round its own seed (weights and data order) on both sides: the curves' spread shows
            result = run_worker(kind, epochs, 32, round_number, backend=backend)
            runs[label].append(result)
            print(
                f"round {round_number + 1} {label:9s}: s/epoch {[round(s, 2) for s in result['seconds']]}, "
                f"test mse after {args.epochs} {result['test_mse'][args.epochs - 1]:.5f}, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    torch_runs = torch_side_by_side(args) if importlib.util.find_spec("torch") is not None else None
    low_memory = run_worker("aecli", 3, 32, jit=False)
    big_batch = run_worker("aecli", 5, 256)
    floor_256 = run_worker("floor", 256)
    floor_32 = run_worker("floor", 32)
    evaluation = run_worker("eval")
    baseline = run_worker("baseline")
    help_seconds = wall([str(ROOT / ".venv" / "bin" / "aecli"), "--help"])
    import_seconds = wall([sys.executable, "-c", "import tensorflow"])

    def steady(kind: str) -> float:  # median of every epoch after the first (compilation) of every round
        return statistics.median(s for run in runs[kind] for s in run["seconds"][1:])

    target = statistics.median(run["test_mse"][-1] for run in runs["plain"])
    plain_time = statistics.median(sum(run["seconds"]) for run in runs["plain"])

    def time_to_target(run: dict[str, Any]) -> float:  # inf: not reached in the epochs run
        elapsed = 0.0
        for seconds, mse in zip(run["seconds"], run["test_mse"], strict=True):
            elapsed += seconds
            if mse <= target * 1.001:
                return elapsed
        return math.inf

    def median_time(kind: str) -> float | None:
        times = [time_to_target(run) for run in runs[kind]]
        middle = statistics.median(times) if times else math.inf
        return None if math.isinf(middle) else middle

    aecli_time, jax_time = median_time("aecli"), median_time("aecli-jax")
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "data": source,
        "plain_seconds_per_epoch": steady("plain"),
        "aecli_seconds_per_epoch": steady("aecli"),
        "speedup_same_hyperparameters": steady("plain") / steady("aecli"),
        "plain_final_test_mse": target,
        "aecli_final_test_mse": statistics.median(run["test_mse"][args.epochs - 1] for run in runs["aecli"]),
        "plain_time_to_5_epoch_mse": plain_time,
        "aecli_time_to_plain_5_epoch_mse": aecli_time,
        "jax_seconds_per_epoch": steady("aecli-jax") if runs["aecli-jax"] else None,
        "jax_final_test_mse": statistics.median(r["test_mse"][args.epochs - 1] for r in runs["aecli-jax"])
        if runs["aecli-jax"]
        else None,
        "jax_time_to_plain_5_epoch_mse": jax_time,
        "torch": torch_runs,
        "aecli_batch256_seconds_per_epoch": statistics.median(big_batch["seconds"][1:]),
        "matmul_floor_batch256_seconds_per_epoch": floor_256["seconds_per_epoch"],
        "matmul_floor_batch32_seconds_per_epoch": floor_32["seconds_per_epoch"],
        "sgemm_gflops_batch256": floor_256["gflops"],
        "eval_samples_per_second_predict": evaluation["predict"],
        "eval_samples_per_second_aecli": evaluation["aecli"],
        "help_seconds": help_seconds,
        "import_tensorflow_seconds": import_seconds,
        "peak_rss_mib_import_only": baseline["peak_rss_mib"],
        "peak_rss_mib_aecli_no_xla": low_memory["peak_rss_mib"],
        "aecli_no_xla_seconds_per_epoch": statistics.median(low_memory["seconds"][1:]),
        "peak_rss_mib_plain": max(run["peak_rss_mib"] for run in runs["plain"]),
        "peak_rss_mib_aecli": max(run["peak_rss_mib"] for run in runs["aecli"]),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results["args"] = {"rounds": args.rounds, "epochs": args.epochs, "quick": args.quick}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    write_benchmarks(results, args)


def write_benchmarks(results: dict[str, Any], args: argparse.Namespace) -> None:
    """BENCHMARKS.md: this script's table, then the sections the other scripts wrote."""
    parts = [
        args.out / name
        for name in (
            "kinds.md",
            "text.md",
            "ops.md",
            "series.md",
            "oneclass.md",
            "odds.md",
            "nab.md",
            "workers.md",
            "score.md",
            "serve.md",
            "sweep.md",
            "schedules.md",
            "streaming.md",
            "text_streaming.md",
        )
    ]
    extra = "".join("\n" + part.read_text() for part in parts if part.exists())
    (ROOT / "BENCHMARKS.md").write_text(render(results, args) + extra)
    print((ROOT / "BENCHMARKS.md").read_text())


# (Adam learning rate, batch size, schedule): larger steps, and warm-up + decay schedules
SWEEP: tuple[tuple[float, int, dict[str, Any] | None], ...] = (
    (1e-3, 32, None),
    (2e-3, 32, None),
    (3e-3, 32, None),
    (3e-3, 64, None),
    (5e-3, 128, None),
    (1e-3, 32, {"kind": "cosine"}),
    (2e-3, 32, {"kind": "cosine"}),
    (2e-3, 32, {"kind": "cosine", "warmup_epochs": 1}),
    (3e-3, 32, {"kind": "cosine", "warmup_epochs": 1}),
    (3e-3, 64, {"kind": "cosine", "warmup_epochs": 1}),
)


def sweep(args: argparse.Namespace) -> None:
    """Can other hyperparameters or a schedule buy time to quality? aecli's fast path, seed 0."""
    results = args.out / "results.json"
    bar = json.loads(results.read_text())["plain_final_test_mse"] if results.exists() else None
    lines = [
        "## Larger learning rates, batches and schedules (time to quality)",
        "",
        f"Command: `python benchmarks/bench.py --sweep --epochs {args.epochs}` (part of `make bench-full`). "
        f"aecli's default fast path on the reference data, Adam, {args.epochs} epochs, seed 0; cumulative wall "
        "seconds (first epoch includes compilation) and held-out test MSE after each epoch. Cosine decays to 0 at "
        "the last epoch; with a warm-up the rate first rises linearly from 0 to the peak"
        + (
            f". **Bold**: at or below plain Keras's 5-epoch test MSE ({bar:.5f}, the first table's bar)."
            if bar
            else "."
        )
        + "",
        "",
        "| Adam learning rate (peak) | batch | schedule | after each epoch: seconds, test MSE |",
        "|---|---|---|---|",
    ]
    for learning_rate, batch_size, schedule in SWEEP:
        result = run_worker("aecli", args.epochs, batch_size, 0, learning_rate=learning_rate, schedule=schedule)
        elapsed = itertools.accumulate(result["seconds"])
        cells = ", ".join(
            f"**{t:.1f} s: {mse:.5f}**" if bar and mse <= bar * 1.001 else f"{t:.1f} s: {mse:.5f}"
            for t, mse in zip(elapsed, result["test_mse"], strict=True)
        )
        shown = (
            "constant" if schedule is None else ", ".join(f"{k} {v}" if k != "kind" else v for k, v in schedule.items())
        )
        lines.append(f"| {learning_rate:g} | {batch_size} | {shown} | {cells} |")
        print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")


def _jax_cell(r: dict[str, Any]) -> str:
    if r["jax_seconds_per_epoch"] is None:
        return "n/a (jax not installed)"
    reached = r["jax_time_to_plain_5_epoch_mse"]
    return f"{r['jax_seconds_per_epoch']:.2f} s, MSE {r['jax_final_test_mse']:.5f}, " + (
        "not reached" if reached is None else f"{reached:.1f} s"
    )


def torch_side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    """aecli on the PyTorch backend against a plain PyTorch loop of the same model, alternating."""
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "aecli": []}
    rounds = 1 if args.quick else 2
    for round_number in range(rounds):
        runs["plain"].append(run_worker("torch", args.epochs, 32, round_number))
        runs["aecli"].append(run_worker("aecli", args.epochs, 32, round_number, backend="torch"))
        print(f"round {round_number + 1} torch: {[r['seconds'] for r in (runs['plain'][-1], runs['aecli'][-1])]}")

    def steady(side: str) -> float:
        return statistics.median(s for run in runs[side] for s in run["seconds"][1:])

    def final(side: str) -> float:
        return statistics.median(run["test_mse"][-1] for run in runs[side])

    return {
        "plain_seconds_per_epoch": steady("plain"),
        "aecli_seconds_per_epoch": steady("aecli"),
        "plain_final_test_mse": final("plain"),
        "aecli_final_test_mse": final("aecli"),
        "rounds": rounds,
        "runs": runs,
    }


def _torch_row(r: dict[str, Any]) -> tuple[str, str, str, str]:
    title = "Backend torch (runtime.backend: torch) against a plain PyTorch loop: steady s/epoch, test MSE"
    t = r.get("torch")
    if not t:
        return (title, "n/a (torch not installed)", "", "")
    return (
        title,
        f"{t['plain_seconds_per_epoch']:.2f} s, MSE {t['plain_final_test_mse']:.5f} (PyTorch DataLoader loop)",
        f"{t['aecli_seconds_per_epoch']:.2f} s, MSE {t['aecli_final_test_mse']:.5f}",
        f"{t['plain_seconds_per_epoch'] / t['aecli_seconds_per_epoch']:.2f}x "
        f"({t['rounds']} round{'s' if t['rounds'] > 1 else ''}; reported)",
    )


def render(r: dict[str, Any], args: argparse.Namespace) -> str:
    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if not a or not b else f"{a / b:.2f}x"

    tta = r["aecli_time_to_plain_5_epoch_mse"]
    rows = [
        (
            "Same hyperparameters (batch 32, Adam 1e-3, MSE): steady s/epoch",
            f"{r['plain_seconds_per_epoch']:.2f} s",
            f"{r['aecli_seconds_per_epoch']:.2f} s",
            f"{ratio(r['plain_seconds_per_epoch'], r['aecli_seconds_per_epoch'])} faster (target >= 3x)",
        ),
        (
            "Samples/s (60,000 rows / steady epoch)",
            f"{60000 / r['plain_seconds_per_epoch']:,.0f}",
            f"{60000 / r['aecli_seconds_per_epoch']:,.0f}",
            "",
        ),
        (
            f"Test MSE after {args.epochs} epochs (1,000 held-out images)",
            f"{r['plain_final_test_mse']:.5f}",
            f"{r['aecli_final_test_mse']:.5f}",
            "same loss curve within noise",
        ),
        (
            "Time to plain Keras's 5-epoch test MSE (incl. compilation)",
            f"{r['plain_time_to_5_epoch_mse']:.1f} s",
            "not reached" if tta is None else f"{tta:.1f} s",
            f"{ratio(tta, r['plain_time_to_5_epoch_mse'])} of plain's time (target <= 0.33x)",
        ),
        (
            "Batch 256 steady s/epoch vs the sgemm floor measured here",
            f"floor {r['matmul_floor_batch256_seconds_per_epoch']:.2f} s",
            f"{r['aecli_batch256_seconds_per_epoch']:.2f} s",
            f"{ratio(r['aecli_batch256_seconds_per_epoch'], r['matmul_floor_batch256_seconds_per_epoch'])} the floor "
            f"(target <= 2x; sgemm {r['sgemm_gflops_batch256']:.0f} GFLOP/s)",
        ),
        (
            "Backend jax (runtime.backend: jax): steady s/epoch, test MSE, time to plain's 5-epoch MSE",
            f"{r['plain_seconds_per_epoch']:.2f} s (TensorFlow fit defaults)",
            _jax_cell(r),
            f"{ratio(r['plain_seconds_per_epoch'], r['jax_seconds_per_epoch'])} faster (target >= 3x)",
        ),
        _torch_row(r),
        ("Matmul floor at batch 32", "", f"{r['matmul_floor_batch32_seconds_per_epoch']:.2f} s/epoch", ""),
        (
            "Evaluation throughput, 10,000 rows (samples/s)",
            f"{r['eval_samples_per_second_predict']:,.0f} (model.predict)",
            f"{r['eval_samples_per_second_aecli']:,.0f}",
            f"{ratio(r['eval_samples_per_second_aecli'], r['eval_samples_per_second_predict'])} (target >= 8x)",
        ),
        (
            "`aecli --help` vs `import tensorflow`",
            f"{r['import_tensorflow_seconds']:.2f} s (import)",
            f"{r['help_seconds']:.2f} s (--help)",
            f"{ratio(r['help_seconds'], r['import_tensorflow_seconds'])} (target <= 0.6 s and <= 0.1x)",
        ),
        (
            "Peak RSS of a training process",
            f"{r['peak_rss_mib_plain']:.0f} MiB",
            f"{r['peak_rss_mib_aecli']:.0f} MiB",
            "target <= 1,229 MiB (1.2 GiB)",
        ),
        (
            "Same, with `training.jit_compile: false` (no XLA)",
            "",
            f"{r['peak_rss_mib_aecli_no_xla']:.0f} MiB, {r['aecli_no_xla_seconds_per_epoch']:.2f} s/epoch",
            "",
        ),
    ]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`python benchmarks/bench.py{' --quick' if args.quick else ''} --rounds "
        f"{args.rounds} --epochs {args.epochs}`) on "
        f"{r['machine']}; data: {r['data']}. Reference model Dense 784-128-64-32-64-128-784. Training runs "
        "alternate plain Keras and aecli, each in a fresh process; raw numbers in `benchmarks/results/results.json`. "
        "Every section below names the command that produced it: `make bench` reruns this table and the per-kind "
        "table (`--quick`), `make bench-full` every section at full size.",
        "",
        "| measurement | plain Keras | aecli | ratio / target |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "## Reading the targets",
        "",
        f"- **The matmul floor.** The benchmark times the model's matrix products per training step (forward "
        "and both backward products of every layer, at the real shapes) as one XLA program: "
        f"{r['matmul_floor_batch32_seconds_per_epoch']:.2f} s/epoch at batch 32. aecli runs at "
        f"{r['aecli_seconds_per_epoch'] / r['matmul_floor_batch32_seconds_per_epoch']:.2f}x that: it runs a block "
        "of 64 whole training steps (batch gather, forward, backward, Adam) as one compiled program, where Keras's "
        "own multi-step loop launches a separately compiled step and fetches a batch from tf.data for every "
        "step; at batch 32 that per-step cost was as large as the arithmetic.",
        "- **Same hyperparameters, same curve.** The runs differ only in initial weights, data order and float "
        f"summation order; their {args.epochs}-epoch test MSEs by round show the run-to-run spread: "
        + "; ".join(
            f"{kind} " + ", ".join(f"{run['test_mse'][args.epochs - 1]:.5f}" for run in r["runs"][kind])
            for kind in ("plain", "aecli", "aecli-jax")
            if r["runs"][kind]
        )
        + ". "
        "Time to target uses the median of plain's MSEs as the bar and the median over rounds of the time each "
        "run first reaches it (a run that never does counts as slowest); a run that lands on the high side of the "
        "spread needs a sixth or seventh epoch: at equal hyperparameters the bar can only be beaten by per-epoch "
        "speed and the cost of the first (compiling) epoch. Each round uses its own seed on every side. "
        "Larger constant learning rates and batches do not buy time to quality for this model (the sweep "
        "below: they end above the 1e-3, batch-32 curve); a warm-up + cosine schedule peaking at 2e-3 does, "
        "but it is not the default: on the shipped configs' 4,000-row runs it ends above their constant rate "
        "(the schedules table below).",
        f"- **Memory.** Importing TensorFlow and Keras and holding the 60,000 x 784 float32 array peaks at "
        f"{r['peak_rss_mib_import_only']:.0f} MiB here; training adds the rest. aecli's input pipeline shares "
        "the array's memory with TensorFlow (DLPack; rows as aecli's loader produces them, in an aligned buffer) "
        "instead of copying it; tf.data's default graph rewrites are off for that pipeline (they serialize it "
        "with the captured array inside, a second copy of the data) and freed heap pages go back to the OS after "
        "every epoch (glibc malloc_trim), so what remains is mostly XLA's compiled code and its compilation.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
