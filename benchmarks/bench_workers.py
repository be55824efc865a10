"""`make bench-full`, scaling out: what each worker of a local multi-worker cluster reads.

One shard folder (the MNIST test images from ../shared/data/mnist, or synthetic MNIST-shaped
rows when that folder is absent, written by `aecli prepare --shards 8`), the reference config
(configs/mnist.yaml), trained by one process without a strategy and by clusters of 2 and 4
local worker processes (`training.distribute: multi_worker`), each worker reading its own
files. A cluster of 2 with a folder of 1 file shows the fallback (every worker reads every file).
Per worker: shard files read, rows decoded and payload bytes (counted where rows are read),
and training steps/s. All workers share this machine's cores, so steps/s says what a worker
costs here, not how a cluster of machines scales.

    python benchmarks/bench_workers.py [--epochs 2] [--out benchmarks/results]

Writes workers.json and workers.md (a BENCHMARKS.md section) under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
AECLI = [sys.executable, "-m", "aecli"]
READ_LINE = re.compile(r"read (\d+) of (\d+) shard files \(([\d,]+) rows, ([\d,]+) bytes\)")


def source(folder: Path) -> str:
    if (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        return str(MNIST)
    rows = (np.random.default_rng(0).random((10_000, 28, 28)) * 255).astype(np.uint8)
    np.save(folder / "synthetic.npy", rows)
    return str(folder / "synthetic.npy")


def prepare(data: str, out: Path, files: int) -> Path:
    subprocess.run([*AECLI, "prepare", data, str(out), "--format", "npy", "--shards", str(files)], check=True)
    return out


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("localhost", 0))
    ports = [int(probe.getsockname()[1]) for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def train(shards: Path, workers: int, epochs: int, scratch: Path) -> dict[str, Any]:
    """One training of the reference config on `shards`: one process (workers 0) or a local cluster."""
    runs = scratch / f"runs-{workers}-{shards.name}"
    args = [*AECLI, "train", str(ROOT / "configs" / "mnist.yaml"), "--runs-dir", str(runs), "--quiet"]
    args += ["--set", f"data.source={shards}", "--set", f"training.epochs={epochs}"]
    if not workers:
        started = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        return _summary([done.stdout], time.perf_counter() - started)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(workers)]}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    logs = [(scratch / f"worker-{index}.out", scratch / f"worker-{index}.err") for index in range(workers)]
    processes = []
    for index, (out, err) in enumerate(logs):  # files, not pipes: a full pipe would stall the cluster
        with out.open("w") as stdout, err.open("w") as stderr:
            spec = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            processes.append(
                subprocess.Popen(
                    [*args, "--set", "training.distribute=multi_worker"],
                    stdout=stdout,
                    stderr=stderr,
                    env={**env, "TF_CONFIG": json.dumps(spec)},
                )
            )
    for process, (_, err) in zip(processes, logs, strict=True):
        if process.wait(timeout=1800):
            raise SystemExit(f"worker failed ({process.returncode}): {err.read_text().strip().splitlines()[-1:]}")
    return _summary([out.read_text() for out, _ in logs], time.perf_counter() - started)


def _summary(outputs: list[str], wall: float) -> dict[str, Any]:
    """Per worker: what it read (the chief's from run.json, the others' from their last line) and steps/s."""
    run = Path(outputs[0].strip().splitlines()[-1])
    info = json.loads((run / "run.json").read_text())
    reads = [info["reading"]]
    for out in outputs[1:]:
        files, total, rows, payload = READ_LINE.search(out).groups()  # type: ignore[union-attr]
        reads.append({"files": int(files), "files_in_folder": int(total), "rows": _int(rows), "bytes": _int(payload)})
    with (run / "history.csv").open() as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    batch = yaml.safe_load((run / "config.yaml").read_text())["training"]["batch_size"]
    steps = math.ceil(info["data"]["train"] / batch) * len(seconds)
    return {
        "reads": reads,
        "steps_per_s": steps / sum(seconds),
        "wall_s": wall,
        "rows_by_split": {part: info["data"][part] for part in ("train", "validation", "test")},
        "worker_input": info.get("worker_input"),
        "test_mse": json.loads((run / "metrics.json").read_text())["reconstruction"]["mse"],
    }


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aecli-bench-workers-") as folder:
        scratch = Path(folder)
        data = source(scratch)
        eight = prepare(data, scratch / "shards-8", 8)
        one = prepare(data, scratch / "shards-1", 1)
        results = {
            "data": data,
            "rows": [
                {"setup": "1 process", "workers": 1, **train(eight, 0, args.epochs, scratch)},
                {"setup": "2 workers, own files", "workers": 2, **train(eight, 2, args.epochs, scratch)},
                {"setup": "4 workers, own files", "workers": 4, **train(eight, 4, args.epochs, scratch)},
                {"setup": "2 workers, 1-file folder (fallback)", "workers": 2, **train(one, 2, args.epochs, scratch)},
            ],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps(results, indent=2))
    (args.out / "workers.md").write_text(render(results, args))
    print(render(results, args))


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    alone = results["rows"][0]["reads"][0]["rows"]
    split = results["rows"][0]["rows_by_split"]
    lines = [
        "## Scaling out: what each worker reads",
        "",
        f"Command: `python benchmarks/bench_workers.py --epochs {args.epochs}` (part of `make bench-full`). Data: "
        + ("the MNIST test images (../shared/data/mnist)" if "mnist" in results["data"] else "synthetic MNIST rows")
        + f" written by `aecli prepare --format npy --shards 8` ({split['train']:,} training, "
        f"{split['validation']:,} validation and {split['test']:,} test rows), `configs/mnist.yaml` (batch 128), "
        f"{args.epochs} epochs, local worker processes on this machine's {os.cpu_count()} cores. Rows and bytes: "
        "everything "
        "the process decoded from the folder over the whole run (the scaling check, every epoch's training "
        "and validation passes, the final report), counted where rows are read. One process for comparison.",
        "",
        "| setup | worker | files read | rows decoded | MB read | rows vs 1 process | steps/s (per worker) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        for index, read in enumerate(row["reads"]):
            lines.append(
                f"| {row['setup']} | {index} | {read['files']} of {read['files_in_folder']} | {read['rows']:,} | "
                f"{read['bytes'] / 1e6:.1f} | {read['rows'] / alone:.2f} | {row['steps_per_s']:.1f} |"
            )
    lines += [
        "",
        "Test MSE by setup: "
        + ", ".join(f"{row['setup']} {row['test_mse']:.4f}" for row in results["rows"])
        + ". A worker decodes a little more than 1/N of one process: its training stream reads its next "
        "pass ahead (the shuffle buffer fills before the first batch), once wasted at the end of training, and "
        "a share with fewer validation rows than the largest reads some of its first ones again to fill its "
        "batches (once: they are kept in memory for later epochs). Steps/s: every worker "
        "runs on the same cores and every step all-reduces the gradients over local gRPC, so it says what "
        'a worker costs here, not how separate machines scale (see README "Scaling out" for the arithmetic).',
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
