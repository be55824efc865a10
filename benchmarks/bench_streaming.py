"""`make bench-full`, part 1: peak memory of training on shard folders of 100 MB and 4 GB.

Data: float32 MNIST rows (the real test images from ../shared/data/mnist, scaled to [0, 1] and
tiled; synthetic MNIST-shaped rows when that folder is absent), written as plain .npy shard
folders. Each training runs `aecli train` in its own process for one epoch of the reference
model (Dense 784-128-64-32-64-128-784, Adam, MSE, batch 256); its peak RSS comes from the
kernel's accounting of that process (wait4).

    python benchmarks/bench_streaming.py [--big-gb 4] [--small-mb 100] [--out benchmarks/results]

Writes streaming.json and streaming.md (a BENCHMARKS.md section) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
ROW_BYTES = 784 * 4
SHARD_ROWS = 100_000  # ~300 MB per float32 shard


def source_rows() -> tuple[np.ndarray, str]:
    sys.path.insert(0, str(ROOT))
    from aecli.data.files import read_idx

    if MNIST.exists():
        return read_idx(MNIST).reshape(-1, 784).astype(np.float32) / 255.0, "MNIST test images (../shared/data/mnist)"
    rng = np.random.default_rng(0)
    return (rng.random((10_000, 784)) < 0.2).astype(np.float32), "synthetic MNIST-shaped rows"


def write_shards(folder: Path, rows: int, images: np.ndarray) -> None:
    """A plain .npy shard folder of `rows` float32 rows, written a block at a time."""
    folder.mkdir(parents=True)
    for number, start in enumerate(range(0, rows, SHARD_ROWS)):
        count = min(SHARD_ROWS, rows - start)
        shard = np.lib.format.open_memmap(folder / f"part-{number:04d}.npy", "w+", np.float32, (count, 784))
        for offset in range(0, count, len(images)):
            block = images[: min(len(images), count - offset)]
            shard[offset : offset + len(block)] = block
        shard.flush()
        del shard


def train(source: str, workdir: Path, name: str) -> dict[str, Any]:
    """One epoch of `aecli train` in a child process: wall seconds and the child's peak RSS."""
    config = {
        "data": {"source": source, "validation_split": 0.02, "test_split": 0.02},
        "model": {"encoder": [128, 64], "latent_dim": 32},
        "training": {"epochs": 1, "batch_size": 256, "checkpoint": {"best": False, "last": False}},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    run, measured = measured_train(path, workdir, name)
    metrics = json.loads((run / "metrics.json").read_text())
    return {**measured, "test_mse": metrics["reconstruction"]["mse"]}


def measured_train(path: Path, workdir: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """`aecli train path` in a child process: its run, wall seconds and peak RSS, rows and speed."""
    command = [sys.executable, "-m", "aecli", "train", str(path), "--runs-dir", str(workdir / "runs"), "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: aecli train failed:\n{err}")
    run = Path(out.strip().splitlines()[-1])
    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return run, {
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "wall_seconds": seconds,
        "train_rows": info["data"]["train"],
        "epoch_seconds": metrics["training"]["wall_seconds"],
        "samples_per_second": metrics["training"]["samples_per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-gb", type=float, default=4.0)
    parser.add_argument("--small-mb", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    images, described = source_rows()
    sizes = {"small": int(args.small_mb * 2**20 / ROW_BYTES), "big": int(args.big_gb * 2**30 / ROW_BYTES)}
    results: dict[str, Any] = {"data": described, "rows": sizes}
    with tempfile.TemporaryDirectory(prefix="aecli-bench-") as temp:
        workdir = Path(temp)
        in_memory = workdir / "small.npy"
        np.save(in_memory, np.tile(images, (-(-sizes["small"] // len(images)), 1))[: sizes["small"]])
        results["small_in_memory"] = train(str(in_memory), workdir, "small_in_memory")
        print("100 MB .npy in memory:", results["small_in_memory"], flush=True)
        for size, rows in sizes.items():
            folder = workdir / f"{size}-shards"
            write_shards(folder, rows, images)
            results[f"{size}_streamed"] = train(str(folder), workdir, f"{size}_streamed")
            print(f"{size} shards streamed:", results[f"{size}_streamed"], flush=True)
            for shard in folder.iterdir():
                shard.unlink()  # free the disk before the next size
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(results, indent=2))
    (args.out / "streaming.md").write_text(render(results, args))
    print(render(results, args))


def render(r: dict[str, Any], args: argparse.Namespace) -> str:
    small, big, memory = r["small_streamed"], r["big_streamed"], r["small_in_memory"]
    rows = [
        (f"{args.small_mb:g} MB .npy, loaded in memory", memory),
        (f"{args.small_mb:g} MB shard folder, streamed", small),
        (f"{args.big_gb:g} GB shard folder, streamed", big),
    ]
    lines = [
        "## Data larger than memory (streamed shard folders)",
        "",
        f"Command: `python benchmarks/bench_streaming.py --big-gb {args.big_gb:g} --small-mb {args.small_mb:g}` "
        f"(part of `make bench-full`). Data: float32 rows of {r['data']}, tiled; one epoch of the reference model "
        "(batch 256) in a fresh `aecli train` process, report included; peak RSS of that process.",
        "",
        "| data | training rows | peak RSS | epoch | samples/s | test MSE |",
        "|---|---|---|---|---|---|",
    ]
    for label, result in rows:
        lines.append(
            f"| {label} | {result['train_rows']:,} | {result['peak_rss_mib']:.0f} MiB | "
            f"{result['epoch_seconds']:.1f} s | {result['samples_per_second']:,.0f} | {result['test_mse']:.4f} |"
        )
    growth = big["peak_rss_mib"] - small["peak_rss_mib"]
    lines += [
        "",
        f"Streaming {args.big_gb * 1024 / args.small_mb:.0f}x more data costs {growth:+.0f} MiB of peak RSS: "
        "memory is bounded by the shuffle buffer (64 MiB of raw rows), the prefetched batches and the "
        "per-sample error arrays of the report (8 bytes a row per error kind), not by the data set.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
