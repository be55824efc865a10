"""`aecli serve` over real HTTP on localhost: results equal aecli score's and the models' own,
every bad-request family is a 4xx with the reason, concurrent requests are batched, and SIGTERM
lets a request in flight finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from aecli.evaluation import predict_batched
from aecli.trained_run import load_model, open_trained_run


def start_service(run: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "aecli", "serve", str(run), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "serving RUN on http(s)://127.0.0.1:PORT (...)"
    assert " on http" in line, line + process.stderr.read() if process.stderr else line
    return process, line.split(" on ")[1].split()[0]


@pytest.fixture(scope="module")
def service(trained_run: Path) -> Iterator[str]:
    process, url = start_service(trained_run, "--max-wait-ms", "20", "--max-request-mb", "0.05")
    yield url
    process.terminate()
    process.wait(timeout=60)


def call(url: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def digits(rows: int, start: int = 0) -> list[list[float]]:
    return load_digits().data[start : start + rows].tolist()


def test_scores_embeddings_and_reconstructions_match_the_run(cli, service: str, trained_run: Path, tmp_path) -> None:
    rows = digits(40)
    status, scored = call(service, "/score?top_k=2", {"instances": rows})
    assert status == 200, scored
    table = tmp_path / "rows.csv"
    table.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    expected = cli("score", trained_run, table)
    assert expected.exit_code == 0, expected.output
    lines = expected.stdout.strip().splitlines()[1:]
    # the same bits: every model call, here and in score, has one shape (evaluation.CALL_ROWS)
    assert [f"{r['score']:.8g}" for r in scored["results"]] == [line.split(",")[1] for line in lines]
    assert [r["anomalous"] for r in scored["results"]] == [line.split(",")[2] == "1" for line in lines]
    assert all(len(r["top"]) == 2 and r["top"][0]["element"].startswith("pixel ") for r in scored["results"])
    run = open_trained_run(trained_run)
    x = run.scaling.apply(np.asarray(rows).reshape(-1, *run.sample_shape))
    status, embedded = call(service, "/embed", rows)  # a bare list of rows works too
    codes = predict_batched(load_model(trained_run / "encoder.keras", compile=False), x)
    assert status == 200 and np.allclose(embedded["embeddings"], codes, atol=1e-6)
    assert embedded["ids"] == list(range(len(rows)))  # numbered as /score numbers them
    csv_body = ("\n".join(",".join(str(v) for v in row) for row in rows[:3]) + "\n").encode()
    status, rebuilt = call(service, "/reconstruct", csv_body, "text/csv")
    model = load_model(trained_run / "model.keras", compile=False)
    expected_raw = run.scaling.invert(predict_batched(model, x[:3]).astype(np.float64))
    assert status == 200 and np.allclose(rebuilt["reconstructions"], expected_raw, atol=1e-4)


def test_health_and_metadata(service: str) -> None:
    assert call(service, "/health") == (200, {"status": "ok"})
    status, meta = call(service, "/metadata")
    assert status == 200 and meta["model_kind"] == "dense" and meta["input_shape"] == [8, 8, 1]
    assert meta["threshold"]["score"] == "mse" and meta["threshold"]["value"] > 0
    assert {"aecli", "keras", "backend"} <= set(meta["versions"])
    assert call(service, "/health/ready") == (200, {"status": "ready"})
    status, refused = call(service, "/admin/reload", {})
    assert status == 403 and "needs the service started with API keys" in refused["detail"]  # (SIGHUP still works)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "reason"),
    [
        ("/score", b"{not json", "application/json", 422, "not JSON"),
        ("/score", b"[" * 30_000, "application/json", 422, "nested too deeply"),
        ("/score", {"instances": [[True] * 64]}, "application/json", 422, "list of numbers"),
        ("/score", {"instances": [[10**400] + [0] * 63]}, "application/json", 422, "beyond float64's range"),
        ("/score", {"instances": [[10**50] + [0] * 63]}, "application/json", 422, "beyond float32's range"),
        ("/score", {"instances": [[True] + [0] * 63]}, "application/json", 422, "list of numbers"),
        ("/score", {"instances": [[[[0] * 64]]]}, "application/json", 422, "each row must have the shape (64,)"),
        ("/score", {"instances": []}, "application/json", 422, "at least one row"),
        ("/score", {"instances": [[1, 2, 3]]}, "application/json", 422, "the model expects (8, 8, 1)"),
        ("/score", {"instances": [["a"] * 64]}, "application/json", 422, "list of numbers"),
        ("/score", {"instances": [[1] * 64, [1] * 63]}, "application/json", 422, "different lengths"),
        ("/score", b'{"instances": [[NaN' + b", 0" * 63 + b"]]}", "application/json", 422, "NaN or inf"),
        ("/score", {"instances": [{"a": 1}, {"b": 2}]}, "application/json", 422, "first row's keys"),
        ("/embed", b"1,2\n3,x\n", "text/csv", 422, "line 2, column 2"),
        ("/score", b"\xff\xfe", "text/csv", 422, "not UTF-8"),
        ("/score", b"hello", "text/plain", 415, "application/json or text/csv"),
        ("/score", {"instances": [[0] * 64] * 2000}, "application/json", 413, "over the limit"),
        ("/score?top_k=-1", {"instances": [[0] * 64]}, "application/json", 422, "greater than or equal to 0"),
        ("/nowhere", {"instances": [[0] * 64]}, "application/json", 404, "Not Found"),
    ],
)
def test_bad_requests_are_4xx_with_the_reason(service, path, body, content_type, status, reason) -> None:
    got, answer = call(service, path, body, content_type)
    assert got == status and reason in json.dumps(answer), answer


def test_wrong_method_is_405(service: str) -> None:
    assert call(service, "/score")[0] == 405  # GET


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(service: str) -> None:
    _, before = call(service, "/metadata")
    alone = [call(service, "/score", {"instances": digits(1, start=i)})[1]["results"][0]["score"] for i in range(16)]
    answers: dict[int, float] = {}

    def client(i: int) -> None:
        answers[i] = call(service, "/score", {"instances": digits(1, start=i)})[1]["results"][0]["score"]

    _, middle = call(service, "/metadata")
    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, after = call(service, "/metadata")
    assert [answers[i] for i in range(16)] == alone  # exactly: a row's score does not depend on its batch
    assert middle["model_calls"] - before["model_calls"] == 16  # one call each, alone
    assert after["model_calls"] - middle["model_calls"] < 16  # gathered into fewer calls


def test_sigterm_lets_the_request_in_flight_finish(trained_run: Path) -> None:
    process, url = start_service(trained_run, "--max-wait-ms", "1500", "--max-batch", "1000")
    assert call(url, "/health")[0] == 200  # counted as a request answered, like every other
    answer: list[tuple[int, Any]] = []
    request = threading.Thread(target=lambda: answer.append(call(url, "/score", {"instances": digits(2)})))
    request.start()
    time.sleep(0.5)  # the request now waits in the batcher's window
    process.send_signal(signal.SIGTERM)
    request.join(timeout=60)
    out, _ = process.communicate(timeout=60)
    assert answer and answer[0][0] == 200 and len(answer[0][1]["results"]) == 2
    assert process.returncode == 0 and "stopped after 2 request(s)" in out


def test_a_taken_port_is_a_one_line_error(cli, trained_run: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = cli("serve", trained_run, "--port", taken.getsockname()[1])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.stderr


def test_a_refused_huge_body_ends_the_connection_instead_of_being_read(service: str) -> None:
    """A body declared past the limit is refused before it is read, and the connection closes:
    reading (and discarding) a gigabyte to keep the connection alive would be the attacker's win."""
    import socket

    host, port = service.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + b"0" * 65536)
        answer = b""
        while chunk := client.recv(65536):  # until the service closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()
