"""`make bench-full`, scoring: `aecli score` on a CSV of 100 MB and of 1 GB, peak memory and rows/s.

A small dense run is trained on scikit-learn's digits written as a CSV (64 pixel columns, a
header); the inputs to score are those 1,797 rows repeated to about 100 MB and about 1 GB. Each
`aecli score RUN FILE` runs in its own process, its output to /dev/null; peak RSS is that
process's maximum resident set. Memory should not grow with the file: rows are read, scored and
written 4,096 at a time.

    python benchmarks/bench_score.py [--big-gb 1] [--small-mb 100] [--out benchmarks/results]

Writes score.json and score.md (a BENCHMARKS.md section) under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
AECLI = [sys.executable, "-m", "aecli"]
# Runs a command and prints its peak RSS in KiB (the only child of this small process).
PEAK = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "assert done.returncode == 0, done.stderr\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def digits_block() -> tuple[str, str, int]:
    data = load_digits().data.astype(int)
    header = ",".join(f"p{i}" for i in range(64)) + "\n"
    block = "".join(",".join(map(str, row)) + "\n" for row in data)
    return header, block, len(data)


def write_csv(path: Path, target_bytes: int) -> int:
    """The digits rows repeated until the file holds about `target_bytes`; its row count."""
    header, block, rows = digits_block()
    copies = max(1, target_bytes // len(block))
    with path.open("w") as handle:
        handle.write(header)
        for _ in range(copies):
            handle.write(block)
    return copies * rows


def train(folder: Path) -> Path:
    table = folder / "train.csv"
    write_csv(table, 1)
    config = folder / "score.yaml"
    config.write_text(f"data: {{source: {table}}}\nmodel: {{encoder: [32], latent_dim: 8}}\ntraining: {{epochs: 2}}\n")
    done = subprocess.run(
        [*AECLI, "train", str(config), "--runs-dir", str(folder / "runs"), "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def measure(run: Path, table: Path, rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PEAK, *AECLI, "score", str(run), str(table)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    return {
        "bytes": table.stat().st_size,
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "peak_rss_mib": int(out.stdout.strip()) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big-gb", type=float, default=1.0)
    parser.add_argument("--small-mb", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aecli-bench-score-") as folder:
        scratch = Path(folder)
        run = train(scratch)
        results = []
        for label, size in (("small", args.small_mb * 1e6), ("big", args.big_gb * 1e9)):
            table = scratch / f"{label}.csv"
            rows = write_csv(table, int(size))
            results.append({"label": label, **measure(run, table, rows)})
            table.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "score.json").write_text(json.dumps(results, indent=2))
    (args.out / "score.md").write_text(render(results, args))
    print(render(results, args))


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    small, big = results
    lines = [
        "## Scoring new data (`aecli score`)",
        "",
        f"Command: `python benchmarks/bench_score.py --big-gb {args.big_gb:g} --small-mb {args.small_mb:g}` (part "
        "of `make bench-full`). A dense 64-32-8 run trained on scikit-learn's digits written as a CSV; the inputs are "
        "those 1,797 rows repeated. Each `aecli score RUN FILE` in a fresh process, output to /dev/null (the "
        "CSV rows are still formatted and written); peak RSS of that process.",
        "",
        "| CSV | rows | time | rows/s | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result['bytes'] / 1e6:,.0f} MB | {result['rows']:,} | {result['seconds']:.1f} s | "
            f"{result['rows_per_s']:,.0f} | {result['peak_rss_mib']:,.0f} MiB |"
        )
    growth = big["peak_rss_mib"] - small["peak_rss_mib"]
    lines += [
        "",
        f"{big['bytes'] / small['bytes']:.0f}x more data costs {growth:+.0f} MiB of peak RSS: rows are read, scored "
        "and written 4,096 at a time.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
