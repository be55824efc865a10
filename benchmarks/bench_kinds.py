"""`make bench`, per model kind: every shipped config with aecli's defaults against Keras's plain
`fit` of the same model on the same data, and which ops XLA slows down on this CPU.

    python benchmarks/bench_kinds.py [--rows 4000] [--epochs 5] [--rounds 2] [--quick] [--out benchmarks/results]

Each side trains in a fresh process. aecli: `aecli train CONFIG` (its defaults, report included),
steady seconds per epoch from the run's history.csv. Plain Keras: the model aecli builds for that
config (same layers, same initial weights), `compile(optimizer, loss)` and `fit(x, x, batch_size,
epochs, validation_data)` with Keras's defaults; denoising gets its noisy inputs drawn once, as
in the Keras example. Data: the MNIST test images under ../shared/data/mnist (or the bundled
digits for the digits configs); Fashion-MNIST is not available offline, so fashion_dense.yaml
trains on MNIST, which has its shape. The reference config also runs on the JAX and PyTorch
backends (plain: Keras's `fit` on that backend). Each config's arithmetic floor is measured too
(`worker_floor`). Writes kinds.json, kinds.md and ops.md.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_SHOWN = "../shared/data/mnist"
CONFIGS = (
    ("mnist.yaml", "dense, BCE, batch 128"),
    ("seed.yaml", "dense, MSE, batch 32"),
    ("fashion_dense.yaml", "dense, one layer, batch 32"),
    ("mnist_sparse.yaml", "sparse (L1 on the code), batch 256"),
    ("mnist_conv.yaml", "conv + max pooling, batch 128"),
    ("mnist_denoise.yaml", "conv denoising, Gaussian 0.4, batch 128"),
    ("mnist_vae.yaml", "conv VAE, batch 128"),
    ("mnist_augment.yaml", "dense, augmented (shift, rotation, zoom), batch 32"),
    ("digits.yaml", "dense on digits, batch 32"),
    ("compare_optimizers.yaml", "dense on digits, batch 32"),
)
# The reference model on the other backends; plain is Keras's own fit on that backend.
OTHER_BACKENDS = (("seed.yaml", "jax"), ("seed.yaml", "torch"))
# aecli without a config's extra work, to price it: augmentation and denoising noise.
WITHOUT = {
    "mnist_augment.yaml": ("unaugmented", "data.augment=null"),
    "mnist_denoise.yaml": ("clean", "training.noise=null"),
}


@dataclass(frozen=True)
class Case:
    config: str
    model: str
    backend: str = "tensorflow"

    @property
    def name(self) -> str:
        return self.config if self.backend == "tensorflow" else f"{self.config} on {self.backend}"

    def spec(self, rows: int, epochs: int, *extra: str) -> dict[str, Any]:
        return {"config": self.config, "rows": rows, "epochs": epochs, "backend": self.backend, "sets": list(extra)}


# --quick (make bench): a config per model kind, and the reference model on the other backends
QUICK = ("mnist.yaml", "seed.yaml", "mnist_sparse.yaml", "mnist_conv.yaml", "mnist_denoise.yaml", "mnist_vae.yaml")


def cases(only: list[str] | None, quick: bool) -> list[Case]:
    described = dict(CONFIGS)
    every = [Case(config, model) for config, model in CONFIGS]
    every += [Case(config, described[config], backend) for config, backend in OTHER_BACKENDS]
    wanted = only or (QUICK if quick else None)
    return [case for case in every if not wanted or case.config in wanted]


def overrides(spec: dict[str, Any]) -> list[str]:
    settings = [f"training.epochs={spec['epochs']}", "training.early_stopping=null", *spec["sets"]]
    settings.append(f"runtime.backend={spec['backend']}")
    if "digits" not in (ROOT / "configs" / spec["config"]).read_text():
        settings += [f"data.source={MNIST}", f"data.limit={spec['rows']}"]
    return settings


def final_loss(history: dict[str, list[float]]) -> float:
    """The held-out loss after the last epoch (the training loss where a config holds none out)."""
    return float(history["val_loss" if history.get("val_loss") else "loss"][-1])


# ---------------------------------------------------------------- workers (one per subprocess)


def worker_aecli(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from aecli.reporting import read_history_csv

    with tempfile.TemporaryDirectory(prefix="aecli-bench-kinds-") as runs:
        command = [str(ROOT / ".venv" / "bin" / "aecli"), "train", str(ROOT / "configs" / spec["config"])]
        command += ["--quiet", "--runs-dir", runs]
        for setting in overrides(spec):
            command += ["--set", setting]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        run = next(Path(runs).iterdir())
        rows = read_history_csv(run / "history.csv")
        info = json.loads((run / "run.json").read_text())
    history = {key: [row[key] for row in rows if key in row] for key in ("loss", "val_loss", "seconds")}
    return {
        "seconds": history["seconds"],
        "val_loss": history["val_loss"],
        "loss": final_loss(history),
        "wall": wall,
        "jit_compile": info["jit_compile"],
    }


# Warm-up + cosine decay against each config's constant rate (the sweep in bench.py found it
# reaching plain Keras's 5-epoch test MSE in a quarter of the time on the reference model).
SCHEDULE = ("optimizer.learning_rate=0.002", "training.lr_schedule.kind=cosine", "training.lr_schedule.warmup_epochs=1")


def measure_schedules(args: argparse.Namespace) -> str:
    lines = [
        "## A warm-up + cosine schedule on every model kind",
        "",
        f"Command: `python benchmarks/bench_kinds.py --schedules --rows {args.rows} --epochs {args.epochs}` (part of "
        "`make bench-full`). Each config as shipped (Adam, constant rate 1e-3) against the same config with "
        "`optimizer.learning_rate: 0.002` and `lr_schedule: {kind: cosine, warmup_epochs: 1}` (the rate rises "
        f"from 0 to 2e-3 over the first epoch, then decays to 0 at epoch {args.epochs}); same data and seed; "
        "validation loss after each epoch, and the first epoch at which the schedule reaches the constant "
        "rate's final validation loss.",
        "",
        "| config | constant 1e-3: validation loss by epoch | warm-up + cosine: validation loss by epoch | "
        "schedule reaches constant's final loss at epoch |",
        "|---|---|---|---|",
    ]
    for config in QUICK:
        case = Case(config, "")
        constant = run_worker("aecli", case.spec(args.rows, args.epochs))
        scheduled = run_worker("aecli", case.spec(args.rows, args.epochs, *SCHEDULE))
        bar = constant["val_loss"][-1]
        reached = next((i + 1 for i, v in enumerate(scheduled["val_loss"]) if v <= bar), None)
        lines.append(
            f"| `{config}` | {', '.join(f'{v:.4g}' for v in constant['val_loss'])} | "
            f"{', '.join(f'{v:.4g}' for v in scheduled['val_loss'])} | {reached or 'not reached'} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def worker_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """Keras's plain loop on the model aecli builds: no steps_per_execution, no XLA (Keras's CPU default)."""
    sys.path.insert(0, str(ROOT))
    from aecli.backend import import_tensorflow, select_backend
    from aecli.config import load_config

    select_backend(spec["backend"])
    import_tensorflow()
    import keras
    import numpy as np

    from aecli.data import load_dataset
    from aecli.models import build_autoencoder
    from aecli.noise import NoiseSpec, corrupt
    from aecli.training import build_loss, build_optimizer, seed_everything

    cfg, epochs = load_config(ROOT / "configs" / spec["config"], overrides(spec)), spec["epochs"]
    data = load_dataset(cfg.data, seed=cfg.training.seed)
    seed_everything(cfg.training.seed)
    autoencoder = build_autoencoder(cfg.model, data.sample_shape, cfg.loss.name)
    model = autoencoder.model
    if cfg.model.kind == "vae":
        model.compile(optimizer=build_optimizer(cfg.optimizer))
    else:
        model.compile(optimizer=build_optimizer(cfg.optimizer), loss=build_loss(cfg.loss))
    x_in, x_val_in = data.x_train, data.x_val
    if cfg.training.noise is not None:
        noise, rng = NoiseSpec(cfg.training.noise.kind, cfg.training.noise.amount), np.random.default_rng(0)
        x_in = corrupt(data.x_train, noise, rng)
        x_val_in = None if data.x_val is None else corrupt(data.x_val, noise, rng)
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    batch = len(x_in) if cfg.optimizer.name == "gd" else cfg.training.batch_size
    validation = None if data.x_val is None else (x_val_in, data.x_val)
    train: dict[str, Any] = {"x": x_in, "y": data.x_train, "batch_size": batch}
    if cfg.data.augment.active:
        train = {"x": keras_augmented(cfg.data.augment, data.x_train, batch, cfg.training.seed)}
    fitted = model.fit(**train, epochs=epochs, validation_data=validation, verbose=0, callbacks=[Timer()])
    result = {"seconds": seconds, "loss": final_loss(fitted.history)}
    if spec.get("floor"):  # in the same process: one TensorFlow start-up fewer
        from aecli.compilation import resolve_jit_compile
        from aecli.execution import layer_kinds

        jit = resolve_jit_compile(cfg.training.jit_compile, layer_kinds(model), "tensorflow", False, False)
        result["floor"] = measure_floor(model, data, batch, epochs, jit.enabled)
    return result


def measure_floor(model: Any, data: Any, batch: int, epochs: int, jit: bool) -> float:
    """The arithmetic floor of one epoch of a config's model: only what training must compute,
    its forward and backward passes and the optimizer's update (training batches) and forward
    passes (validation batches), in compiled loops over batches already in memory, with XLA
    where aecli's auto rule uses it (dense models; convolutions are faster without on a CPU),
    without metrics, data pipeline, checkpoints or callbacks. The median of `epochs` repeats."""
    import tensorflow as tf

    def batches(x: Any) -> Any:
        full = len(x) // batch
        return tf.constant(x[: full * batch].reshape(full, batch, *x.shape[1:]))

    train, val = batches(data.x_train), batches(data.x_val)

    @tf.function(jit_compile=jit)
    def backward(blocks: Any) -> Any:
        def step(i: Any, total: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(blocks[i], training=True) - blocks[i]))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply(grads, model.trainable_variables)
            return i + 1, total + tf.add_n([tf.reduce_sum(g) for g in grads])  # (used: never pruned)

        return tf.while_loop(lambda i, _: i < tf.shape(blocks)[0], step, [0, 0.0])[1]

    @tf.function(jit_compile=jit)
    def forward(blocks: Any) -> Any:
        def step(i: Any, total: Any) -> tuple[Any, Any]:
            return i + 1, total + tf.reduce_sum(model(blocks[i], training=False))

        return tf.while_loop(lambda i, _: i < tf.shape(blocks)[0], step, [0, 0.0])[1]

    backward(train[:1]), forward(val[:1])  # trace once
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        float(backward(train)), float(forward(val))
        # scaled to whole epochs: the rows of the last, partial batches too
        seconds.append((time.perf_counter() - started) * len(data.x_train) / (len(train) * batch))
    return statistics.median(seconds)


def keras_augmented(augment: Any, x: Any, batch: int, seed: int) -> Any:
    """Augmentation as the Keras guides do it: the random preprocessing layers mapped over a
    shuffled, batched tf.data pipeline (parallel calls, prefetch), the augmented batch as target."""
    import keras
    import tensorflow as tf

    fill = {"fill_mode": augment.fill_mode, "seed": seed}
    layers = []
    if augment.translation:
        layers.append(keras.layers.RandomTranslation(augment.translation, augment.translation, **fill))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation, **fill))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom, **fill))
    pipeline = keras.layers.Pipeline(layers)

    def augmented(images: Any) -> Any:
        images = pipeline(images, training=True)
        return images, images

    dataset = tf.data.Dataset.from_tensor_slices(x).shuffle(len(x), seed=seed).batch(batch)
    return dataset.map(augmented, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


OPS = ("dense", "conv2d", "conv2d_transpose", "conv2d_stride2", "maxpool_same", "conv1d")


def worker_ops(op: str, jit: bool, fused: bool) -> dict[str, Any]:
    """Milliseconds per training step of a two-layer model built around one op, batch 128."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    layers = keras.layers
    shape = (128, 8) if op == "conv1d" else (784,) if op == "dense" else (28, 28, 1)
    inputs = keras.Input(shape)
    if op == "dense":
        outputs = layers.Dense(784, activation="sigmoid")(layers.Dense(256, activation="relu")(inputs))
    elif op == "conv2d":
        hidden = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
        outputs = layers.Conv2D(1, 3, padding="same", activation="sigmoid")(hidden)
    elif op == "conv2d_transpose":
        hidden = layers.Conv2DTranspose(32, 3, padding="same", activation="relu")(inputs)
        outputs = layers.Conv2DTranspose(1, 3, padding="same", activation="sigmoid")(hidden)
    elif op == "conv2d_stride2":
        hidden = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inputs)
        outputs = layers.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")(hidden)
    elif op == "maxpool_same":  # 1x1 convolutions around it: the pooling and its gradient dominate
        hidden = layers.MaxPooling2D(2, padding="same")(layers.Conv2D(8, 1, activation="relu")(inputs))
        outputs = layers.Conv2D(1, 1, activation="sigmoid")(layers.UpSampling2D(2)(hidden))
    else:
        hidden = layers.Conv1D(32, 7, strides=2, padding="same", activation="relu")(inputs)
        outputs = layers.Conv1DTranspose(8, 7, strides=2, padding="same")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse", jit_compile=bool(jit))
    model.optimizer.build(model.trainable_variables)
    x = tf.constant(np.random.default_rng(0).random((128, *shape), dtype=np.float32))

    if fused:  # as aecli's fused blocks: every step inside one compiled loop

        @tf.function(jit_compile=bool(jit))
        def run(steps: Any) -> Any:
            tf.while_loop(lambda i: i < steps, lambda i: (model.train_step((x, x)), i + 1)[1], [tf.constant(0)])
            return tf.constant(0)

    else:  # as Keras's loop: one compiled step per call
        step = tf.function(lambda: model.train_step((x, x)), jit_compile=bool(jit))

        def run(steps: Any) -> Any:
            for _ in range(int(steps)):
                step()

    run(tf.constant(2))
    steps, repeats = 12, 5
    times = []
    for _ in range(repeats):  # the median of several short runs: one run alone swung by 2x here
        started = time.perf_counter()
        run(tf.constant(steps))
        times.append((time.perf_counter() - started) / steps * 1000)
    return {"ms_per_step": statistics.median(times)}


# ---------------------------------------------------------------- the parent


def run_worker(kind: str, *args: Any) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, *(json.dumps(arg) for arg in args)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{kind} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def steady(runs: list[dict[str, Any]]) -> float:
    """Median of every epoch after the first (which compiles) of every round."""
    return statistics.median(s for run in runs for s in run["seconds"][1:])


def measure_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Plain and aecli (and aecli without augmentation or noise, where the config has them)
    alternating round by round, so drift hits every side alike; then the model's floor."""
    without = WITHOUT.get(case.config) if case.backend == "tensorflow" else None
    sides: dict[str, tuple[str, tuple[str, ...]]] = {"plain": ("plain", ()), "aecli": ("aecli", ())}
    if without:
        sides[f"aecli_{without[0]}"] = ("aecli", (without[1],))
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_number in range(args.rounds):
        for side, (kind, extra) in sides.items():
            spec = case.spec(args.rows, args.epochs, *extra)
            spec["floor"] = kind == "plain" and round_number == 0 and case.backend == "tensorflow"
            runs[side].append(run_worker(kind, spec))
    jit = runs["aecli"][0]["jit_compile"]
    row: dict[str, Any] = {side: steady(runs[side]) for side in runs}
    row["loss"] = {side: statistics.median(run["loss"] for run in runs[side]) for side in runs}
    if "floor" in runs["plain"][0]:
        row["floor"] = runs["plain"][0]["floor"]
    return {**row, "jit_compile": jit, "backend": case.backend, "without": without, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs="*")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="a config per model kind, one round of 5 epochs, no per-op XLA table"
    )
    parser.add_argument(
        "--schedules", action="store_true", help="only warm-up + cosine against constant (schedules.md)"
    )
    parser.add_argument("--backend", help="only the rows of this backend (with --only: updates the saved table)")
    parser.add_argument("--only", nargs="*", help="config file names (default: all shipped configs)")
    parser.add_argument("--no-ops", action="store_true", help="skip the per-op XLA table")
    parser.add_argument("--ops-only", action="store_true", help="only the per-op XLA table (ops.md)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        workers: dict[str, Callable[..., dict[str, Any]]] = {
            "aecli": worker_aecli,
            "plain": worker_plain,
            "ops": worker_ops,
        }
        worker = workers[kind]
        print(json.dumps(worker(*map(json.loads, rest))))
        return
    if not MNIST.exists():
        raise SystemExit(f"needs the MNIST images in {MNIST_SHOWN}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.schedules:
        (args.out / "schedules.md").write_text(measure_schedules(args))
        return
    if args.quick:
        args.rounds, args.epochs, args.no_ops = 1, 5, True
    if not args.no_ops:
        ops = measure_ops()
        (args.out / "ops.md").write_text(render_ops(ops))
        if args.ops_only:
            print(render_ops(ops))
            return
    saved = args.out / "kinds.json"
    # --only re-measures some rows of the saved table and keeps the others
    results: dict[str, Any] = json.loads(saved.read_text()) if args.only and saved.exists() else {}
    for case in cases(args.only, args.quick):
        if args.backend and case.backend != args.backend:
            continue
        row = results[case.name] = {**measure_case(case, args), "separately": bool(args.only)}
        print(f"{case.name}: plain {row['plain']:.3f} s/epoch, aecli {row['aecli']:.3f} s/epoch", flush=True)
    (args.out / "kinds.json").write_text(json.dumps(results, indent=2))
    (args.out / "kinds.md").write_text(render_kinds(results, args))
    print(render_kinds(results, args))


def measure_ops() -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for op in OPS:
        table[op] = {
            f"{'fused' if fused else 'step'}_{'xla' if jit else 'plain'}": run_worker(
                "ops", op, bool(jit), bool(fused)
            )["ms_per_step"]
            for fused in (0, 1)
            for jit in (0, 1)
        }
        print(op, table[op], flush=True)
    return table


def render_ops(ops: dict[str, dict[str, float]]) -> str:
    lines = [
        "## Which ops XLA slows down on a CPU",
        "",
        "Command: `python benchmarks/bench_kinds.py` (part of `make bench-full`). Milliseconds per training step "
        "(forward, backward, Adam; the median of five runs of 12 steps) of a two-layer model built around each "
        "op, batch 128, TensorFlow backend: "
        "one compiled call per step (as Keras's loop) or every step inside one compiled loop (as aecli's "
        "fused blocks), each without and with XLA. These numbers are the rule behind `training.jit_compile: "
        "auto` (aecli/compilation.py): XLA for dense models on a CPU, none for convolutions and pooling.",
        "",
        "| op | per call, no XLA | per call, XLA | XLA / none | fused, no XLA | fused, XLA | XLA / none |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, t in ops.items():
        lines.append(
            f"| {op} | {t['step_plain']:.1f} | {t['step_xla']:.1f} | {t['step_xla'] / t['step_plain']:.2f}x | "
            f"{t['fused_plain']:.1f} | {t['fused_xla']:.1f} | {t['fused_xla'] / t['fused_plain']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def verdict(row: dict[str, Any]) -> str:
    """The issue's target for a TensorFlow row: 3x plain fit, or within 1.5x of the model's floor."""
    speedup = row["plain"] / row["aecli"]
    if "floor" not in row:
        return "reported"
    if speedup >= 3:
        return "met (>= 3x)"
    to_floor = row["aecli"] / row["floor"]
    return f"{'met' if to_floor <= 1.5 else 'missed'} ({to_floor:.2f}x floor <= 1.5x)"


def render_kinds(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Every model kind and backend against Keras's plain loop",
        "",
        f"Command: `python benchmarks/bench_kinds.py{' --quick' if args.quick else ''} --rows {args.rows} --epochs "
        f"{args.epochs} --rounds {args.rounds}` (part of `make bench{'' if args.quick else '-full'}`). Data: "
        f"{args.rows:,} MNIST test images from {MNIST_SHOWN} (80% for training, 10% of that held out for "
        "validation) or the bundled digits; each config's own model, optimizer, loss and batch size. aecli: "
        "`aecli train` with its defaults; plain: the "
        "same model (built by aecli, same initial weights), Keras's `compile` and `fit` with their defaults (one "
        "step per call, no XLA on a CPU) on the same backend, denoising inputs noised once. Steady seconds per "
        "epoch: the median of every epoch after the first of each round, training and validation included. "
        f"Loss: the validation loss after {args.epochs} epochs (median over rounds). Floor: one epoch of only "
        "the model's forward and backward passes and the optimizer's update (and the validation forward "
        "passes), in compiled loops over batches already in memory, with XLA where aecli uses it, without "
        "metrics, input pipeline, checkpoints or callbacks (`measure_floor`). Target: 3x plain `fit`, or "
        "within 1.5x of the floor where 3x is out of reach.",
        "",
        "| config | backend | model | plain s/epoch | aecli s/epoch | speed-up | loss plain / aecli | floor s/epoch "
        "| target | XLA (auto) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    described = dict(CONFIGS)
    for name, row in results.items():
        config = name.split(" ")[0]
        floor = f"{row['floor']:.3f}" if "floor" in row else ""
        mark = "*" if row.get("separately") and any(not r.get("separately") for r in results.values()) else ""
        lines.append(
            f"| `{config}`{mark} | {row['backend']} | {described[config]} | {row['plain']:.3f} | {row['aecli']:.3f} | "
            f"{row['plain'] / row['aecli']:.2f}x | {row['loss']['plain']:.4f} / {row['loss']['aecli']:.4f} | "
            f"{floor} | {verdict(row)} | {'on' if row['jit_compile']['enabled'] else 'off'} |"
        )
    lines += ["", *_extra_work_notes(results)]
    return "\n".join(lines) + "\n"


def _extra_work_notes(results: dict[str, Any]) -> list[str]:
    notes = {
        "unaugmented": (
            "plain Keras augments with its random preprocessing layers mapped over a tf.data pipeline (the "
            "Keras guides' way); aecli without its `data.augment`",
            "augmentation",
            0.15,
        ),
        "clean": ("aecli with `training.noise: null` (the same model without noise)", "denoising noise", 0.10),
    }
    lines = []
    for name, row in results.items():
        if row.get("without"):
            key = row["without"][0]
            said, what, target = notes[key]
            cost = row["aecli"] / row[f"aecli_{key}"] - 1
            lines.append(
                f"- `{name}`: {said} runs {row[f'aecli_{key}']:.3f} s/epoch (loss {row['loss'][f'aecli_{key}']:.4f}), "
                f"so {what} costs {cost:+.0%} (target: within {target:.0%})."
            )
    if any(row.get("separately") for row in results.values()) and not all(
        row.get("separately") for row in results.values()
    ):
        lines.append(
            "- Rows marked * were re-measured on their own (`--only`), at another time: this host's speed drifts "
            "(up to about 2x over a day), so compare their ratios, not their seconds, with the other rows."
        )
    backends = [row for row in results.values() if row["backend"] != "tensorflow"]
    if backends:
        lines.append(
            "- Other backends: plain is Keras's `fit` on that backend with its defaults; the PyTorch row against a "
            "plain PyTorch training loop of the same model is in the first table."
        )
    return lines


if __name__ == "__main__":
    main()
