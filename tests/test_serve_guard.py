"""`aecli serve` on a network: API keys, the rule for binding beyond loopback, TLS, the limit on
requests in flight, readiness and the Prometheus metrics, over real HTTP on localhost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aecli.errors import ConfigError
from aecli.service_guard import Exposure, authorized, check_exposure, load_api_keys
from aecli.serving import BadRequest, Batcher, named_runs
from tests.test_serve import digits, start_service

KEY = "k3y-0123456789abcdef-aecli"


def fetch(url: str, path: str, body: Any = None, key: str | None = None, context: Any = None) -> tuple[int, Any]:
    """Status, headers and body text of one request."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, (response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        return error.code, (error.headers, error.read().decode())


def test_keys_are_read_checked_and_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# service keys\n\n{KEY}\n  second-key-0123456789  \n")
    assert load_api_keys(keys) == (KEY, "second-key-0123456789")
    monkeypatch.setenv("AECLI_API_KEY", KEY)
    assert load_api_keys(None) == (KEY,)
    monkeypatch.delenv("AECLI_API_KEY")
    assert load_api_keys(None) == ()
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="key 1 is shorter than 16 characters"):
        load_api_keys(tmp_path / "short")
    for special in (Path("/dev/zero"), tmp_path):
        with pytest.raises(ConfigError, match="not a file of keys"):
            load_api_keys(special)
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_api_keys(tmp_path / "empty")
    assert authorized(f"Bearer {KEY}", (KEY,)) and authorized(f"bearer {KEY}", ("other-key-0123456789", KEY))
    assert not authorized(f"Bearer {KEY}x", (KEY,)) and not authorized(KEY, (KEY,)) and not authorized(None, (KEY,))
    assert authorized(None, ())  # no keys: open


def test_exposure_beyond_loopback_needs_keys_and_tls_or_insecure() -> None:
    assert check_exposure(Exposure("127.0.0.1", False, False, False)) is None
    assert check_exposure(Exposure("::1", False, False, False)) is None
    assert check_exposure(Exposure("0.0.0.0", True, True, False)) is None
    with pytest.raises(ConfigError, match="without API keys and TLS; give --api-key-file"):
        check_exposure(Exposure("0.0.0.0", False, False, False))
    with pytest.raises(ConfigError, match="without TLS"):
        check_exposure(Exposure("10.1.2.3", True, False, False))
    warning = check_exposure(Exposure("0.0.0.0", False, False, True))
    assert warning is not None and "anyone who can reach this machine" in warning


def test_runs_are_named_by_folder_or_by_name(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert named_runs([first], []) == {"run": first}
    assert named_runs([first, second], [f"b={second}"]) == {"run": first, "b": second}
    with pytest.raises(ConfigError, match="two runs would be called 'run'"):
        named_runs([first, second], [])
    with pytest.raises(ConfigError, match="cannot name a model"):
        named_runs([first], [f"../x={first}"])
    with pytest.raises(ConfigError, match="expected NAME=RUN with RUN one of the runs"):
        named_runs([first], [f"x={second}"])


def test_rows_waiting_past_the_limit_are_answered_503() -> None:
    batcher = Batcher(detector=None, max_rows=256, max_wait_s=0.0, max_queued_rows=5)  # type: ignore[arg-type]

    async def two_requests() -> None:
        waiting = asyncio.create_task(batcher.submit("score", np.zeros((3, 64), np.float32)))  # nobody computes it
        await asyncio.sleep(0)
        assert batcher.queued_rows == 3
        with pytest.raises(BadRequest) as refused:
            await batcher.submit("score", np.zeros((3, 64), np.float32))
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert batcher.queued_rows == 0  # (a request that went away no longer counts)

    asyncio.run(two_requests())


def test_refusals_before_serving_are_one_line(cli, trained_run: Path, tmp_path: Path) -> None:
    exposed = cli("serve", trained_run, "--host", "0.0.0.0", "--port", "0")
    assert exposed.exit_code == 2 and "--insecure" in exposed.stderr and len(exposed.stderr.splitlines()) == 1
    half = cli("serve", trained_run, "--port", "0", "--ssl-certfile", tmp_path / "cert.pem")
    assert half.exit_code == 2 and "go together" in half.stderr
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    bad = cli(
        "serve",
        trained_run,
        "--port",
        "0",
        "--ssl-certfile",
        tmp_path / "bad.pem",
        "--ssl-keyfile",
        tmp_path / "bad.pem",
    )
    assert bad.exit_code == 2 and "not a usable certificate" in bad.stderr and "Traceback" not in bad.output


def test_keys_limits_readiness_metrics_and_two_models(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "keys").write_text(KEY + "\n")
    name, other = trained_run.name, tmp_path / "other"
    shutil.copytree(trained_run, other)
    process, url = start_service(
        trained_run,
        str(other),
        *("--name", f"b={other}", "--api-key-file", str(tmp_path / "keys"), "--max-concurrent", "1"),
        *("--max-wait-ms", "3000", "--access-log", "--timeout-request", "2", "--max-queued-rows", "5"),
    )
    try:
        assert fetch(url, "/health")[0] == 200 and fetch(url, "/health/ready")[0] == 200  # open to load balancers
        status, (headers, text) = fetch(url, "/score", {"instances": digits(2)})
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        status, (_, text) = fetch(url, "/score", {"instances": digits(2)}, key="wrong-key-0123456789-x")
        assert status == 401 and "wrong-key" not in text  # never echoed
        # one request waits in the batcher's 3 s window; a second one meanwhile is over the limit
        first: list[tuple[int, Any]] = []
        waiting = threading.Thread(target=lambda: first.append(fetch(url, "/score", {"instances": digits(3)}, KEY)))
        waiting.start()
        time.sleep(0.5)
        status, (headers, _) = fetch(url, "/score", {"instances": digits(1)}, KEY)
        waiting.join(timeout=60)
        assert status == 503 and headers["Retry-After"] == "1"
        assert first and first[0][0] == 200 and len(json.loads(first[0][1][1])["results"]) == 3
        _two_models(url, name)
        assert fetch(url, "/metrics")[0] == 401
        status, (headers, text) = fetch(url, "/metrics", key=KEY)
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert 'aecli_requests_total{route="/score",status="200"} 1.0' in text
        assert 'aecli_requests_total{route="/score",status="401"} 2.0' in text
        assert 'aecli_requests_total{route="/score",status="503"} 1.0' in text
        assert 'aecli_requests_total{route="/models/{name}/score",status="404"} 1.0' in text
        assert f'aecli_rows_total{{model="{name}",verb="score"}} 3.0' in text
        assert 'aecli_rows_total{model="b",verb="score"} 5.0' in text
        assert f'aecli_batch_rows_count{{model="{name}"}} 1.0' in text
        assert f'aecli_score_recent{{model="{name}",quantile="0.5"}}' in text and "aecli_alert_rate_recent" in text
        assert f'aecli_alert_rate_expected{{model="{name}"}}' in text  # the run's calibration says what to expect
        _slow_clients_are_dropped(url)
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=60)
    logged = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    statuses = sorted(e["status"] for e in logged if e["path"] == "/score")
    assert statuses == [200, 401, 401, 408, 503]  # (408: the client whose body never came whole)
    assert all(e["client"] == "127.0.0.1" and e["seconds"] >= 0 for e in logged)
    assert "Traceback" not in errors  # (a dropped client is not an error)


def _two_models(url: str, name: str) -> None:
    """Both runs answer under their names, the first also at /score; unknown names and path
    tricks are 404s; a row's score is the same bits alone or batched with others."""
    status, (_, text) = fetch(url, "/models", key=KEY)
    assert status == 200 and json.loads(text)["default"] == name and set(json.loads(text)["models"]) == {name, "b"}
    rows = digits(4)
    status, (_, text) = fetch(url, "/models/b/score", {"instances": rows}, KEY)
    together = json.loads(text)
    assert status == 200 and together["model"] == "b" and len(together["results"]) == 4
    status, (_, text) = fetch(url, "/models/b/score", {"instances": rows[2:3]}, KEY)
    assert json.loads(text)["results"][0]["score"] == together["results"][2]["score"]  # exactly: batch-invariant
    assert json.loads(fetch(url, "/models/b/metadata", key=KEY)[1][1])["run"] == "other"
    status, (_, text) = fetch(url, "/models/b/score", {"instances": digits(6)}, KEY)
    assert status == 413 and "over the limit of 5 rows waiting at once" in text  # --max-queued-rows
    for path in ("/models/nope/score", "/models/..%2F..%2Fetc/score"):
        status, (_, text) = fetch(url, path, {"instances": rows}, KEY)
        assert status == 404 and "nope" not in text and "etc" not in text
    assert fetch(url, "/models/b/../../score", {"instances": rows}, KEY)[0] in (200, 404)  # (normalised by urllib)


def test_tls_sighup_and_admin_reload_swap_the_threshold_and_keep_serving(trained_run: Path, tmp_path: Path) -> None:
    run, cert, pem_key = tmp_path / "run", tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copytree(trained_run, run)
    (tmp_path / "keys").write_text(KEY + "\n")
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem_key), "-out", str(cert)],
        capture_output=True,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr.decode()[-200:]}")
    tls = ("--ssl-certfile", str(cert), "--ssl-keyfile", str(pem_key))
    process, url = start_service(run, "--api-key-file", str(tmp_path / "keys"), *tls)
    trusting = ssl.create_default_context(cafile=str(cert))

    def threshold() -> float:
        status, (_, text) = fetch(url, "/score", {"instances": digits(1)}, KEY, trusting)
        assert status == 200, text
        return float(json.loads(text)["threshold"]["value"])

    try:
        assert url.startswith("https://127.0.0.1:")
        with pytest.raises(OSError):  # plain HTTP to a TLS port gets no answer (a reset or a refusal)
            urllib.request.urlopen(url.replace("https://", "http://") + "/health", timeout=10)
        before = threshold()
        record = json.loads((run / "thresholds.json").read_text())
        record["active"] = {**record["active"], "value": 12345.0, "method": "hand-set"}
        (run / "thresholds.json").write_text(json.dumps(record))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while threshold() != 12345.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert threshold() == 12345.0 != before
        (run / "thresholds.json").write_text("{broken")
        status, (_, text) = fetch(url, "/admin/reload", {}, KEY, trusting)
        assert status == 409 and "reload failed, still serving the previous" in text
        assert threshold() == 12345.0  # the previous one still serves
        record["active"]["value"] = 0.5
        (run / "thresholds.json").write_text(json.dumps(record))
        assert fetch(url, "/admin/reload", {}, context=trusting)[0] == 401
        status, (_, text) = fetch(url, "/admin/reload", {}, KEY, trusting)
        assert status == 200 and "threshold mse 0.5 (hand-set" in text and threshold() == 0.5
        _, (_, metrics) = fetch(url, "/metrics", key=KEY, context=trusting)
        assert 'aecli_reloads_total{model="run",result="ok"} 2.0' in metrics
        assert 'aecli_reloads_total{model="run",result="failed"} 1.0' in metrics
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=60)
    assert "reload failed" in errors and "Traceback" not in errors


def _slow_clients_are_dropped(url: str) -> None:
    """A client that sends nothing, half its headers, or half its body is dropped at the
    --timeout-request deadline (2 s here), while others are served."""
    host, port = url.removeprefix("http://").split(":")
    body = f"POST /score HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 900\r\n\r\n[[".encode()
    openings = [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n", body]
    clients = []
    for opening in openings:
        client = socket.create_connection((host, int(port)))
        client.sendall(opening)
        client.settimeout(30)
        clients.append(client)
    started = time.monotonic()
    assert fetch(url, "/health")[0] == 200
    for client in clients:
        assert client.recv(100) == b""  # closed by the service, with nothing sent
        client.close()
    assert time.monotonic() - started < 20
