"""`make bench-full`, serving: `aecli serve` under a bounded load, with and without request batching.

A small dense run is trained on scikit-learn's digits written as a CSV (the run bench_score.py
trains). The service runs in its own process on localhost; 32 clients (4 processes x 8 threads,
each thread with its own keep-alive connection) POST /score with one digits row per request,
as fast as answers come, for --seconds. Then the same with `--max-batch 1` (one model call per
request). Reported: requests/s, p50/p99 latency, errors (anything but 200), the service's
resident memory after warm-up and at the end, and rows per model call.

    python benchmarks/bench_serve.py [--seconds 20] [--clients 32] [--out benchmarks/results]

Writes serve.json and serve.md (a BENCHMARKS.md section) under --out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_score import AECLI, ROOT, train
from sklearn.datasets import load_digits

PROCESSES = 4
MODES = {"batched": ["--max-batch", "256", "--max-wait-ms", "5"], "one at a time": ["--max-batch", "1"]}


def start(run: Path, options: list[str]) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [*AECLI, "serve", str(run), "--port", "0", *options], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, int(line.split(" on http://127.0.0.1:")[1].split()[0])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client_process(port: int, threads: int, seconds: float, queue: Any) -> None:
    """`threads` clients, each sending one-row /score requests back to back until time is up."""
    rows = load_digits().data.tolist()
    results: list[tuple[float, int]] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, i = [], offset
        while time.perf_counter() < stop:
            body = json.dumps({"instances": [rows[i % len(rows)]]})
            started = time.perf_counter()
            connection.request("POST", "/score?top_k=3", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started, response.status))
            i += threads
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.put(results)


def metadata(port: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metadata")
    return dict(json.loads(connection.getresponse().read()))


def load(port: int, clients: int, seconds: float) -> list[tuple[float, int]]:
    queue: Any = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=client_process, args=(port, clients // PROCESSES, seconds, queue))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    results = [item for _ in processes for item in queue.get()]
    for process in processes:
        process.join()
    return results


def measure(run: Path, mode: str, clients: int, seconds: float) -> dict[str, Any]:
    service, port = start(run, MODES[mode])
    try:
        load(port, PROCESSES, 2.0)  # warm-up: the first calls trace the model
        calls_before, rss_start = metadata(port)["model_calls"], rss_mib(service.pid)
        started = time.perf_counter()
        results = load(port, clients, seconds)
        elapsed = time.perf_counter() - started
        calls, rss_end = metadata(port)["model_calls"] - calls_before, rss_mib(service.pid)
    finally:
        service.terminate()
        service.wait(timeout=60)
    latencies = np.array([seconds_taken for seconds_taken, _ in results]) * 1000
    return {
        "mode": mode,
        "requests": len(results),
        "requests_per_s": len(results) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": sum(status != 200 for _, status in results),
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
        "rows_per_call": len(results) / max(calls, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aecli-bench-serve-") as folder:
        run = train(Path(folder))
        results = [measure(run, mode, args.clients, args.seconds) for mode in MODES]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2))
    (args.out / "serve.md").write_text(render(results, args))
    print(render(results, args))


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    batched, single = results
    lines = [
        "## Serving (`aecli serve`)",
        "",
        f"Command: `python benchmarks/bench_serve.py --seconds {args.seconds:g} --clients {args.clients}` (part of "
        "`make bench-full`). The dense run bench_score.py trains, served on localhost; "
        f"{args.clients} clients ({PROCESSES} processes, keep-alive connections) POST /score with one digits row "
        f"each, back to back, for {args.seconds:g} s, on the same 2 cores as the service. Memory: the service's "
        "resident set after a warm-up and at the end.",
        "",
        "| mode | requests | requests/s | p50 | p99 | errors | rows per model call | RSS start → end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['requests']:,} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} ms | "
            f"{r['p99_ms']:.1f} ms | {r['errors']} | {r['rows_per_call']:.1f} | "
            f"{r['rss_start_mib']:,.0f} → {r['rss_end_mib']:,.0f} MiB |"
        )
    lines += [
        "",
        f"Batching answers {batched['requests_per_s'] / single['requests_per_s']:.1f}x the requests per second of "
        "one model call per request, on the same model and load.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
