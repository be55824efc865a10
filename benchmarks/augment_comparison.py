"""Overfitting with and without augmentation (README "Augmentation against overfitting").

    python benchmarks/augment_comparison.py [--config configs/mnist_augment.yaml] [--epochs 150]

Trains the config twice with aecli's own training code, once with its data.augment and once
without, and after every epoch measures the reconstruction MSE of the clean (never augmented)
training rows and of the held-out test rows. Data: 3,000 MNIST test images from
../shared/data/mnist, split 1,000 test / 1,000 validation / 1,000 training rows. Writes
benchmarks/results/augment.json and docs/augment_curves.png, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
DATA = [f"data.source={MNIST}", "data.limit=3000", "data.test_split=0.3334", "data.validation_split=0.5"]


class CleanErrors:
    """A progress reporter that measures, after every epoch, the MSE of clean training and test rows."""

    def __init__(self, model: Any, x_train: np.ndarray, x_test: np.ndarray) -> None:
        self.model, self.x_train, self.x_test = model, x_train, x_test
        self.rows: list[dict[str, float]] = []

    def epoch_started(self, *args: object) -> None: ...

    def step_finished(self, *args: object) -> None: ...

    def training_finished(self) -> None: ...

    def epoch_finished(self, epoch: int, epochs: int, row: dict[str, float]) -> None:
        def mse(x: np.ndarray) -> float:
            return float(np.mean((self.model.predict(x, batch_size=1024, verbose=0) - x) ** 2))

        self.rows.append({"epoch": epoch, "train_mse": mse(self.x_train), "test_mse": mse(self.x_test)})


def train(config_path: Path, epochs: int, augmented: bool) -> dict[str, Any]:
    from aecli.augment import augmenter
    from aecli.config import build_config
    from aecli.data import load_dataset
    from aecli.models import build_autoencoder
    from aecli.training import fit_autoencoder, seed_everything

    overrides = [*DATA, f"training.epochs={epochs}"] + ([] if augmented else ["data.augment=null"])
    config = build_config(config_path, overrides)
    data = load_dataset(config.data, config.training.seed)
    seed_everything(config.training.seed)
    model = build_autoencoder(config.model, data.sample_shape, config.loss.name).model
    reporter = CleanErrors(model, data.x_train, data.x_test)
    augment = augmenter(config.data.augment, data.scaled_range)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aecli-augment-") as run_dir:
        result = fit_autoencoder(
            model, data.x_train, data.x_val, config.training, config.optimizer, config.loss, Path(run_dir),
            reporter, augment=augment,
        )  # fmt: skip
    return {
        "augment": config.data.augment.describe(),
        "rows": {
            "train": len(data.x_train),
            "validation": 0 if data.x_val is None else len(data.x_val),
            "test": len(data.x_test),
        },
        "seconds": time.perf_counter() - started,
        "history": [{**row, **clean} for row, clean in zip(result.history, reporter.rows, strict=True)],
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run, color in zip(runs, ("tab:red", "tab:blue"), strict=False):
        epochs = [row["epoch"] for row in run["history"]]
        label = "no augmentation" if run["augment"] == "none" else f"augment: {run['augment']}"
        for key, style in (("train_mse", "--"), ("test_mse", "-")):
            values = [row[key] for row in run["history"]]
            axes[0].plot(epochs, values, style, color=color, label=f"{label}, {key.split('_')[0]}")
        gap = [row["test_mse"] - row["train_mse"] for row in run["history"]]
        axes[1].plot(epochs, gap, color=color, label=label)
    axes[0].set(xlabel="epoch", ylabel="MSE (clean rows)", yscale="log", title="Train and test MSE per epoch")
    axes[1].set(xlabel="epoch", ylabel="test MSE - train MSE", title="Generalization gap")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| run | best test MSE (epoch) | final train MSE | final test MSE | final gap (test - train) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        history = run["history"]
        best = min(history, key=lambda row: row["test_mse"])
        last = history[-1]
        lines.append(
            f"| {run['augment'] if run['augment'] != 'none' else 'no augmentation'} "
            f"| {best['test_mse']:.5f} ({best['epoch']}) | {last['train_mse']:.5f} | {last['test_mse']:.5f} "
            f"| {last['test_mse'] - last['train_mse']:.5f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist_augment.yaml")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    runs = [train(args.config, args.epochs, augmented) for augmented in (False, True)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "augment.json").write_text(json.dumps(runs, indent=1))
    plot(runs, ROOT / "docs" / "augment_curves.png")
    print(table(runs))


if __name__ == "__main__":
    main()
