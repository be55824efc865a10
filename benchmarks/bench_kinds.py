"""`make bench`, per model kind: every shipped config with aecli's defaults against Keras's plain
`fit` of the same model on the same data, and which ops XLA slows down on this CPU.

    python benchmarks/bench_kinds.py [--rows 4000] [--epochs 4] [--rounds 2] [--out benchmarks/results]

Each side trains in a fresh process. aecli: `aecli train CONFIG` (its defaults, report included),
steady seconds per epoch from the run's history.csv. Plain Keras: the model aecli builds for that
config (same layers, same initial weights), `compile(optimizer, loss)` and `fit(x, x, batch_size,
epochs, validation_data)` with Keras's defaults; denoising gets its noisy inputs drawn once, as
in the Keras example. Data: the MNIST test images under ../shared/data/mnist (or the bundled
digits for the digits configs); Fashion-MNIST is not available offline, so fashion_dense.yaml
trains on MNIST, which has its shape. Writes kinds.json, kinds.md and ops.md.
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


def overrides(config: str, rows: int, epochs: int, augment: bool = True) -> list[str]:
    settings = [f"training.epochs={epochs}", "training.early_stopping=null"] + (
        [] if augment else ["data.augment=null"]
    )
    if "digits" not in (ROOT / "configs" / config).read_text():
        settings += [f"data.source={MNIST}", f"data.limit={rows}"]
    return settings


# ---------------------------------------------------------------- workers (one per subprocess)


def worker_aecli(config: str, rows: int, epochs: int, augment: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aecli-bench-kinds-") as runs:
        command = [str(ROOT / ".venv" / "bin" / "aecli"), "train", str(ROOT / "configs" / config), "--quiet"]
        command += ["--runs-dir", runs]
        for setting in overrides(config, rows, epochs, augment):
            command += ["--set", setting]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        run = next(Path(runs).iterdir())
        lines = (run / "history.csv").read_text().splitlines()
        column = lines[0].split(",").index("seconds")
        seconds = [float(line.split(",")[column]) for line in lines[1:]]
        info = json.loads((run / "run.json").read_text())
    return {"seconds": seconds, "wall": wall, "jit_compile": info["jit_compile"]}


def worker_plain(config: str, rows: int, epochs: int) -> dict[str, Any]:
    """Keras's plain loop on the model aecli builds: no steps_per_execution, no XLA (Keras's CPU default)."""
    sys.path.insert(0, str(ROOT))
    from aecli.backend import import_tensorflow
    from aecli.config import load_config

    import_tensorflow()
    import keras
    import numpy as np

    from aecli.data import load_dataset
    from aecli.models import build_autoencoder
    from aecli.noise import NoiseSpec, corrupt
    from aecli.training import build_loss, build_optimizer, seed_everything

    cfg = load_config(ROOT / "configs" / config, overrides(config, rows, epochs))
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
        spec, rng = NoiseSpec(cfg.training.noise.kind, cfg.training.noise.amount), np.random.default_rng(0)
        x_in = corrupt(data.x_train, spec, rng)
        x_val_in = None if data.x_val is None else corrupt(data.x_val, spec, rng)
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
    model.fit(**train, epochs=epochs, validation_data=validation, verbose=0, callbacks=[Timer()])
    return {"seconds": seconds}


# Conv configs are bound by arithmetic on 2 cores: their floor is measured (see worker_floor).
FLOOR_CONFIGS = ("mnist_conv.yaml", "mnist_denoise.yaml", "mnist_vae.yaml")


def worker_floor(config: str, rows: int, epochs: int) -> dict[str, Any]:
    """The arithmetic floor of one epoch of a config's model: only its forward and backward passes
    (training batches) and forward passes (validation batches), in compiled loops over batches
    already in memory, without XLA (the faster choice for convolutions on a CPU), without the
    optimizer update, metrics, data pipeline or callbacks. The median of `epochs` timed repeats."""
    sys.path.insert(0, str(ROOT))
    from aecli.backend import import_tensorflow
    from aecli.config import load_config

    tf = import_tensorflow()
    from aecli.data import load_dataset
    from aecli.models import build_autoencoder

    cfg = load_config(ROOT / "configs" / config, overrides(config, rows, epochs))
    data = load_dataset(cfg.data, seed=cfg.training.seed)
    model = build_autoencoder(cfg.model, data.sample_shape, cfg.loss.name).model
    batch = cfg.training.batch_size

    def batches(x: Any) -> Any:
        full = len(x) // batch
        return tf.constant(x[: full * batch].reshape(full, batch, *x.shape[1:]))

    train, val = batches(data.x_train), batches(data.x_val)

    @tf.function
    def backward(blocks: Any) -> Any:
        def step(i: Any, total: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(blocks[i], training=True) - blocks[i]))
            grads = tape.gradient(loss, model.trainable_variables)
            return i + 1, total + tf.add_n([tf.reduce_sum(g) for g in grads])  # (used: never pruned)

        return tf.while_loop(lambda i, _: i < tf.shape(blocks)[0], step, [0, 0.0])[1]

    @tf.function
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
    return {"seconds": [statistics.median(seconds)] * 2}


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


def worker_ops(op: str, jit: int, fused: int) -> dict[str, Any]:
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
    command = [sys.executable, __file__, "--worker", kind, *map(str, args)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{kind} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def steady(runs: list[dict[str, Any]]) -> float:
    """Median of every epoch after the first (which compiles) of every round."""
    return statistics.median(s for run in runs for s in run["seconds"][1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs="*")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="config file names (default: all shipped configs)")
    parser.add_argument("--no-ops", action="store_true", help="skip the per-op XLA table")
    parser.add_argument("--ops-only", action="store_true", help="only the per-op XLA table (ops.md)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "ops":
            print(json.dumps(worker_ops(rest[0], int(rest[1]), int(rest[2]))))
        else:
            worker = {"aecli": worker_aecli, "plain": worker_plain, "floor": worker_floor}[kind]
            print(json.dumps(worker(rest[0], int(rest[1]), int(rest[2]), *(bool(int(flag)) for flag in rest[3:]))))
        return
    if not MNIST.exists():
        raise SystemExit(f"needs the MNIST images in {MNIST_SHOWN}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_ops:
        ops = measure_ops()
        (args.out / "ops.md").write_text(render_ops(ops))
        if args.ops_only:
            print(render_ops(ops))
            return
    results: dict[str, Any] = {}
    for config, _ in CONFIGS:
        if args.only and config not in args.only:
            continue
        augmented = "augment:" in (ROOT / "configs" / config).read_text()
        sides = ("plain", "aecli", "aecli_unaugmented") if augmented else ("plain", "aecli")
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side in sides:  # alternate, so drift hits every side alike
                flags = [0] if side == "aecli_unaugmented" else []
                runs[side].append(run_worker(side.split("_")[0], config, args.rows, args.epochs, *flags))
        if config in FLOOR_CONFIGS:
            runs["floor"] = [run_worker("floor", config, args.rows, args.epochs)]
        results[config] = {
            **{side: steady(runs[side]) for side in runs},
            "jit_compile": runs["aecli"][0]["jit_compile"],
            "runs": runs,
        }
        row = results[config]
        print(f"{config}: plain {row['plain']:.3f} s/epoch, aecli {row['aecli']:.3f} s/epoch", flush=True)
    (args.out / "kinds.json").write_text(json.dumps(results, indent=2))
    (args.out / "kinds.md").write_text(render_kinds(results, args))
    print(render_kinds(results, args))


def measure_ops() -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for op in OPS:
        table[op] = {
            f"{'fused' if fused else 'step'}_{'xla' if jit else 'plain'}": run_worker("ops", op, jit, fused)[
                "ms_per_step"
            ]
            for fused in (0, 1)
            for jit in (0, 1)
        }
        print(op, table[op], flush=True)
    return table


def render_ops(ops: dict[str, dict[str, float]]) -> str:
    lines = [
        "## Which ops XLA slows down on a CPU",
        "",
        "Command: `python benchmarks/bench_kinds.py` (part of `make bench`). Milliseconds per training step "
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


def render_kinds(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Every shipped config against Keras's plain loop",
        "",
        f"Command: `python benchmarks/bench_kinds.py --rows {args.rows} --epochs {args.epochs} --rounds "
        f"{args.rounds}` (part of `make bench`). Data: {args.rows:,} MNIST test images from {MNIST_SHOWN} "
        "(80% for training, 10% of that held out for validation) or the bundled digits; each config's own "
        "model, optimizer, loss and batch size. aecli: `aecli train` with its defaults; plain: the same model "
        "(built by aecli, same initial weights), Keras's `compile` and `fit` with their defaults (one step per "
        "call, no XLA on a CPU), denoising inputs noised once. Steady seconds per epoch: the median of every "
        "epoch after the first of each round, training and validation included.",
        "",
        "| config | model | plain Keras s/epoch | aecli s/epoch | aecli speed-up | XLA (auto) |",
        "|---|---|---|---|---|---|",
    ]
    described = dict(CONFIGS)
    for config, row in results.items():
        lines.append(
            f"| `{config}` | {described[config]} | {row['plain']:.3f} | {row['aecli']:.3f} | "
            f"{row['plain'] / row['aecli']:.2f}x | {'on' if row['jit_compile']['enabled'] else 'off'} |"
        )
    floors = [(config, row) for config, row in results.items() if "floor" in row]
    if floors:
        lines += [
            "",
            "The conv configs are bound by arithmetic on 2 cores. Their floor is one epoch of only the model's "
            "forward and backward passes (and the validation forward passes), in compiled loops over batches "
            "already in memory, without XLA, optimizer update, metrics or input pipeline (`worker_floor`):",
            "",
            "| config | floor s/epoch | aecli s/epoch | aecli / floor |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{config}` | {row['floor']:.3f} | {row['aecli']:.3f} | {row['aecli'] / row['floor']:.2f}x |"
            for config, row in floors
        ]
    for config, row in results.items():
        if "aecli_unaugmented" in row:
            cost = row["aecli"] / row["aecli_unaugmented"] - 1
            lines += [
                "",
                f"`{config}`: plain Keras augments with its random preprocessing layers mapped over a tf.data "
                f"pipeline (the Keras guides' way); aecli without its `data.augment` runs "
                f"{row['aecli_unaugmented']:.3f} s/epoch, so augmentation costs {cost:+.0%} (target: within 15%).",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
