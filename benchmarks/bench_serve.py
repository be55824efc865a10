"""`make bench-full`, serving: `aecli serve` under load, under abuse, and reloaded under load.

A small dense run is trained on scikit-learn's digits written as a CSV (the run bench_score.py
trains). The service runs in its own process on localhost, on the same 2 cores as the clients.

1. Batching: 32 clients (4 processes x 8 threads, each thread with its own keep-alive connection)
   POST /score with one digits row per request, as fast as answers come, for --seconds; then
   the same with `--max-batch 1` (one model call per request).
2. Load: --load-clients (200) keep-alive clients for --seconds against the production flags (an
   API key, the default limits: 64 requests in flight, then 503 with Retry-After, which the
   clients honour), while the service is sent SIGHUP (a reload of its run) every 2 s.
3. Abuse: one normal client scores alone, then beside 100 clients that trickle their headers,
   50 that send bodies far over the size limit, and loops of malformed HTTP, wrong and missing
   keys, and path tricks in model names; its p99 latency in both phases, and how many abusive
   connections the service closed (with --timeout-request 5, so that the trickling ones are
   dropped within the phase).

Reported: requests/s, p50/p99 latency, answers by status, the service's resident memory after
warm-up and at the end, rows per model call.

    python benchmarks/bench_serve.py [--seconds 20] [--clients 32] [--load-clients 200] [--out benchmarks/results]

Writes serve.json and serve.md (a BENCHMARKS.md section) under --out.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import multiprocessing
import signal
import socket
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
KEY = "bench-key-0123456789abcdef"
AUTHORIZED = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
RELOAD_EVERY_S = 2.0


def start(run: Path, options: list[str], stderr: Any = None) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [*AECLI, "serve", str(run), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, int(line.split(" on http://127.0.0.1:")[1].split()[0])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client_process(port: int, threads: int, seconds: float, queue: Any, headers: dict[str, str] | None = None) -> None:
    """`threads` clients, each sending one-row /score requests back to back until time is up
    (after a 503, waiting as its Retry-After asks)."""
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
            connection.request("POST", "/score?top_k=3", body, headers or {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started, response.status))
            if response.status == 503:
                time.sleep(float(response.getheader("Retry-After", "1")))
            i += threads
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.put(results)


def metadata(port: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metadata", headers=headers or {})
    return dict(json.loads(connection.getresponse().read()))


def load(port: int, clients: int, seconds: float, headers: dict[str, str] | None = None) -> list[tuple[float, int]]:
    queue: Any = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=client_process, args=(port, clients // PROCESSES, seconds, queue, headers))
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


def latency_summary(results: list[tuple[float, int]], elapsed: float) -> dict[str, Any]:
    latencies = np.array([seconds_taken for seconds_taken, status in results if status == 200]) * 1000
    return {
        "requests": len(results),
        "requests_per_s": len(results) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        "statuses": dict(sorted(collections.Counter(str(status) for _, status in results).items())),
    }


def measure_load(run: Path, keys: Path, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` clients against the production flags, the run reloaded (SIGHUP) every 2 s."""
    with tempfile.TemporaryFile("w+") as log:
        service, port = start(run, ["--api-key-file", str(keys)], stderr=log)
        try:
            load(port, PROCESSES, 2.0, AUTHORIZED)
            rss_start, stop = rss_mib(service.pid), threading.Event()

            def reloader() -> None:
                while not stop.wait(RELOAD_EVERY_S):
                    service.send_signal(signal.SIGHUP)

            sender = threading.Thread(target=reloader)
            sender.start()
            started = time.perf_counter()
            results = load(port, clients, seconds, AUTHORIZED)
            elapsed = time.perf_counter() - started
            stop.set()
            sender.join()
            rss_end = rss_mib(service.pid)
        finally:
            service.terminate()
            service.wait(timeout=60)
        log.seek(0)
        reloads = sum("reloaded" in line for line in log)
    return {"clients": clients, **latency_summary(results, elapsed), "reloads": reloads,
            "rss_start_mib": rss_start, "rss_end_mib": rss_end}  # fmt: skip


def normal_client(port: int, seconds: float) -> list[tuple[float, int]]:
    rows, results = load_digits().data.tolist(), []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    stop, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < stop:
        started = time.perf_counter()
        connection.request("POST", "/score", json.dumps({"instances": [rows[i % len(rows)]]}), AUTHORIZED)
        response = connection.getresponse()
        response.read()
        results.append((time.perf_counter() - started, response.status))
        i += 1
    return results


def abuser(port: int, opening: bytes, trickle: bytes, until: float, tally: collections.Counter[str]) -> None:
    """One abusive connection after another until `until`: send `opening`, then `trickle` a byte
    at a time every 0.5 s (or as fast as possible, for a huge body); count who closed it."""
    while time.perf_counter() < until:
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            tally["refused"] += 1
            continue
        tally["opened"] += 1
        opened = time.perf_counter()
        try:
            connection.sendall(opening)
            while time.perf_counter() < until:
                connection.sendall(trickle)
                if len(trickle) == 1:
                    time.sleep(0.5)
            tally["still open at the end"] += 1
        except OSError:  # the service closed it (reset, or a broken pipe on our next send)
            tally["closed by the service"] += 1
            held = round(time.perf_counter() - opened, 1)
            tally["longest held (s)"] = max(tally["longest held (s)"], held)  # type: ignore[assignment]
        finally:
            connection.close()


def request_abuse(port: int, until: float, tally: collections.Counter[str]) -> None:
    """Complete but hostile requests in a loop: malformed HTTP, wrong and missing keys, path tricks."""
    requests = [
        b"GARBAGE \x00\xff\r\n\r\n",
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]",  # no key
        b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-key-0123456789\r\nContent-Length: 2\r\n\r\n[]",
        f"POST /models/..%2F..%2Fetc%2Fpasswd/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Length: 2\r\n\r\n[]".encode(),
        f"GET /models/%00/metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode(),
    ]
    i = 0
    while time.perf_counter() < until:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(requests[i % len(requests)])
            answer = connection.recv(64)
            tally[answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"] += 1
        i += 1


def measure_abuse(run: Path, keys: Path, seconds: float) -> dict[str, Any]:
    """The normal client's latency alone, then beside the abusers; what happened to the abusers."""
    service, port = start(run, ["--api-key-file", str(keys), "--timeout-request", "5"])
    try:
        # The normal client runs in a process of its own: beside 150 abusive threads in this one, it
        # would measure this process's GIL, not the service.
        pool = multiprocessing.Pool(1)
        pool.apply(normal_client, (port, 2.0))  # warm-up
        started = time.perf_counter()
        alone = latency_summary(pool.apply(normal_client, (port, seconds)), time.perf_counter() - started)
        until = time.perf_counter() + seconds
        slow, huge, answered = collections.Counter[str](), collections.Counter[str](), collections.Counter[str]()
        opening = f"POST /score HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n".encode()
        oversized = f"POST /score HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 1000000000\r\n\r\n"
        threads = [threading.Thread(target=abuser, args=(port, opening, b"X", until, slow)) for _ in range(100)]
        threads += [
            threading.Thread(target=abuser, args=(port, oversized.encode(), b"0" * 65536, until, huge))
            for _ in range(50)
        ]
        threads += [threading.Thread(target=request_abuse, args=(port, until, answered)) for _ in range(2)]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        beside = latency_summary(pool.apply(normal_client, (port, seconds)), time.perf_counter() - started)
        pool.close()
        for thread in threads:
            thread.join()
        healthy = metadata(port, AUTHORIZED)["model_calls"] > 0
    finally:
        service.terminate()
        service.wait(timeout=60)
    return {"alone": alone, "beside_abuse": beside, "slow_headers": dict(slow), "huge_bodies": dict(huge),
            "hostile_requests": dict(answered), "still_serving": healthy}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load-clients", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aecli-bench-serve-") as folder:
        run = train(Path(folder))
        keys = Path(folder) / "keys"
        keys.write_text(KEY + "\n")
        results = {
            "batching": [measure(run, mode, args.clients, args.seconds) for mode in MODES],
            "load": measure_load(run, keys, args.load_clients, args.seconds),
            "abuse": measure_abuse(run, keys, args.seconds / 2),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2))
    (args.out / "serve.md").write_text(render(results, args))
    print(render(results, args))


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    batched, single = results["batching"]
    lines = [
        "## Serving (`aecli serve`)",
        "",
        f"Command: `python benchmarks/bench_serve.py --seconds {args.seconds:g} --clients {args.clients} "
        f"--load-clients {args.load_clients}` (part of `make bench-full`). The dense run bench_score.py trains, "
        "served on localhost, on the same 2 cores as the clients; one digits row per request. Memory: the "
        "service's resident set after a warm-up and at the end.",
        "",
        f"Batching: {args.clients} clients ({PROCESSES} processes, keep-alive connections) POST /score back to "
        f"back for {args.seconds:g} s.",
        "",
        "| mode | requests | requests/s | p50 | p99 | errors | rows per model call | RSS start → end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["batching"]:
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
        *render_load(results["load"], args.seconds),
        *render_abuse(results["abuse"], args.seconds / 2),
    ]
    return "\n".join(lines)


def statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status}: {count:,}" for status, count in counts.items()) or "none"


def render_load(r: dict[str, Any], seconds: float) -> list[str]:
    return [
        f"Load: {r['clients']} keep-alive clients for {seconds:g} s against the production flags (an API key; "
        "the default limit of 64 requests in flight, beyond it 503 with Retry-After, which the clients honour), "
        f"the run reloaded by SIGHUP every {RELOAD_EVERY_S:g} s.",
        "",
        "| requests | requests/s | p50 (200s) | p99 (200s) | answers by status | reloads | RSS start → end |",
        "|---|---|---|---|---|---|---|",
        f"| {r['requests']:,} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
        f"{statuses(r['statuses'])} | {r['reloads']} | {r['rss_start_mib']:,.0f} → {r['rss_end_mib']:,.0f} MiB |",
        "",
    ]


def render_abuse(r: dict[str, Any], seconds: float) -> list[str]:
    alone, beside = r["alone"], r["beside_abuse"]
    return [
        f"Abuse: one normal client (a process of its own) scores for {seconds:g} s alone, then {seconds:g} s "
        "beside 100 clients that trickle their headers a byte every 0.5 s, 50 that send a body declared as "
        "1 GB, and two loops of malformed HTTP, missing and wrong keys, and path tricks in model names "
        "(`--timeout-request 5`).",
        "",
        "| normal client | requests | p50 | p99 | answers by status |",
        "|---|---|---|---|---|",
        f"| alone | {alone['requests']:,} | {alone['p50_ms']:.1f} ms | {alone['p99_ms']:.1f} ms | "
        f"{statuses(alone['statuses'])} |",
        f"| beside the abuse | {beside['requests']:,} | {beside['p50_ms']:.1f} ms | {beside['p99_ms']:.1f} ms | "
        f"{statuses(beside['statuses'])} |",
        "",
        f"Trickling clients: {statuses(r['slow_headers'])}. Huge bodies: {statuses(r['huge_bodies'])}. Hostile "
        f"requests, answers by status: {statuses(r['hostile_requests'])}. Serving afterwards: "
        f"{'yes' if r['still_serving'] else 'no'}.",
        "",
    ]


if __name__ == "__main__":
    main()
