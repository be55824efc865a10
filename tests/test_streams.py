"""Streams: NAB's scoring rules, causal per-step scores and the anomaly likelihood."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from aecli.nab_scoring import NabFile, nab_score, probation_rows
from aecli.time_anomalies import stream_likelihood

SHARED_NAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "nab_stream.yaml"


def sigmoid_at_window_end(width: int) -> float:
    """NAB's value of a detection at the last step of a window of `width` steps (1 at its first)."""
    value = 2 / (1 + math.exp(5 * (-1 / width))) - 1
    return value / (2 / (1 + math.exp(-5)) - 1)


def test_nab_rewards_early_detection_and_charges_false_alarms() -> None:
    window = [(50, 59)]
    scores = np.zeros(100)
    assert probation_rows(100) == 15 and probation_rows(100_000) == 750
    assert nab_score([NabFile(scores, window)], threshold=1.0).normalised == pytest.approx(0.0)  # nothing found
    early = scores.copy()
    early[50] = 1.0  # at the window's first step: the full reward
    assert nab_score([NabFile(early, window)], threshold=1.0).normalised == pytest.approx(100.0)
    late = scores.copy()
    late[59] = 1.0  # at its last step: nearly nothing
    expected = 100 * (sigmoid_at_window_end(10) + 1) / 2
    assert nab_score([NabFile(late, window)], threshold=1.0).normalised == pytest.approx(expected, abs=1e-9)
    both = early + late  # only the earliest detection in a window counts
    assert nab_score([NabFile(both, window)], threshold=1.0).normalised == pytest.approx(100.0)
    alarm = early.copy()
    alarm[20] = 0.9  # a false alarm before any window costs the fp weight (0.11, standard)
    alarm[5] = 5.0  # in the probationary period: never scored
    best = nab_score([NabFile(alarm, window)])  # the best threshold takes the window, not the alarm
    assert best.threshold == 1.0 and best.false_positives == 0 and best.normalised == pytest.approx(100.0)
    found = nab_score([NabFile(alarm, window)], threshold=0.9)
    assert found.false_positives == 1 and found.detected_windows == 1
    assert found.normalised == pytest.approx(100 * (1 - 0.11 + 1) / 2)
    low_fp = nab_score([NabFile(alarm, window)], "reward_low_FP_rate", threshold=0.9)
    assert low_fp.normalised == pytest.approx(100 * (2 - 0.22) / 2)
    unscored = np.full(100, np.nan)  # steps without a score are never detections
    assert nab_score([NabFile(unscored, window)]).normalised == pytest.approx(0.0)


def test_false_alarms_right_after_a_window_cost_less_than_later_ones() -> None:
    window = [(40, 49)]
    near, far = np.zeros(200), np.zeros(200)
    near[51], far[150] = 1.0, 1.0
    cost_near = nab_score([NabFile(near, window)], threshold=1.0).raw
    cost_far = nab_score([NabFile(far, window)], threshold=1.0).raw
    assert cost_far == pytest.approx(-1.0 - 0.11)  # a miss, and an alarm well past the window: the full fp weight
    assert cost_far < cost_near < -1.0  # right after it, the alarm costs less


@pytest.mark.skipif(not (SHARED_NAB / "results").is_dir(), reason="needs ../shared/data/nab")
def test_the_published_numenta_results_score_as_published() -> None:
    windows = json.loads((SHARED_NAB / "labels" / "combined_windows.json").read_text())
    files = []
    for key, spans in sorted(windows.items()):
        folder, name = key.split("/")
        with (SHARED_NAB / "results" / "numenta" / folder / f"numenta_{name}").open() as handle:
            rows = list(csv.DictReader(handle))
        times = np.array([np.datetime64(row["timestamp"].replace(" ", "T")) for row in rows])
        steps = []
        for first, last in spans:
            inside = np.flatnonzero(
                (times >= np.datetime64(first.replace(" ", "T"))) & (times <= np.datetime64(last.replace(" ", "T")))
            )
            steps.append((int(inside[0]), int(inside[-1])))
        files.append(NabFile(np.array([float(row["anomaly_score"]) for row in rows]), steps))
    published = {"standard": 72.97, "reward_low_FP_rate": 66.62, "reward_low_FN_rate": 76.82}
    for profile, value in published.items():
        assert nab_score(files, profile).normalised == pytest.approx(value, abs=0.005)


def test_the_likelihood_is_causal_and_flags_a_jump_once() -> None:
    rng = np.random.default_rng(0)
    errors = rng.gamma(2.0, 1.0, 2000)
    errors[1500:1520] += 40  # an episode
    errors[:15] = np.nan  # steps that end no window
    value = stream_likelihood(errors, short=1, history=1000, warm_up=100, hold_off=0)
    assert (value[:115] == 0).all() and np.isfinite(value).all() and (value >= 0).all()
    assert value[1500] > 1.0 and np.median(value[200:1500]) < 0.1  # tail 1e-10 against the usual
    future = errors.copy()
    future[1600:] = 1000.0  # what comes later changes nothing before it
    np.testing.assert_array_equal(stream_likelihood(future, 1, 1000, 100, 0)[:1600], value[:1600])
    held = stream_likelihood(errors, short=1, history=1000, warm_up=100, hold_off=50)
    assert held[1500] == value[1500] and (held[1501:1520] < value[1501:1520]).any()
    assert (held <= value).all()
    flat = np.ones(500)  # a constant error: its spread is floored, so a wobble is not an alarm
    flat[400] = 1.05
    assert stream_likelihood(flat, 1, 1000, 100, 0)[400] < 0.5


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """configs/nab_stream.yaml trained on the first 400 rows of a periodic series with a jump at
    row 700 and a repeated time at row 300; the series and its NAB windows file."""
    from typer.testing import CliRunner

    from aecli.cli import app

    folder = tmp_path_factory.mktemp("stream")
    times = np.datetime64("2024-01-01T00:00") + np.timedelta64(5, "m") * np.arange(900)
    values = 10 + 5 * np.sin(np.arange(900) * 2 * np.pi / 48) + np.random.default_rng(0).normal(0, 0.2, 900)
    values[700:710] += 12
    times[300] = times[299]  # a repeated time: kept in arrival order (data.series.disorder keep)
    with (folder / "s.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value"])
        writer.writerows([str(t).replace("T", " "), f"{v:.4f}"] for t, v in zip(times, values, strict=True))
    (folder / "w.json").write_text(json.dumps({"s.csv": [["2024-01-03 10:00:00", "2024-01-03 12:00:00"]]}))
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["data"]["source"] = str(folder / "s.csv")
    recipe["data"]["series"]["learn"] = "all"  # probation would be 135 rows here: the first 400 instead
    recipe["data"]["limit"] = 400
    recipe["training"]["steps"] = 100
    (folder / "c.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(folder / "c.yaml"), "--runs-dir", str(folder / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1]), folder / "s.csv", folder / "w.json"


def test_a_stream_run_scores_causally_with_the_likelihood(
    stream_run: tuple[Path, Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, series, windows = stream_run
    result = cli("evaluate", run, "--data", series, "--anomaly-windows", windows, "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    in_time = json.loads((tmp_path / "e" / "metrics.json").read_text())["anomalies_in_time"]
    assert in_time["points"] == "last" and in_time["threshold"] == pytest.approx(1.0)
    with (tmp_path / "e" / "points.csv").open() as handle:
        points = list(csv.DictReader(handle))
    assert len(points) == 900 and points[14]["score"] == "0" and points[702]["flagged"] == "1"
    assert in_time["nab"]["standard"]["best"] > 80  # found at the window's first steps
    result = cli("evaluate", run, "--data", series, "--threshold", "percentile:99")
    assert result.exit_code == 2 and "are likelihoods (anomaly.likelihood), not errors" in result.output


def test_monitor_scores_each_row_as_evaluate_does_and_skips_bad_lines(
    stream_run: tuple[Path, Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, series, _ = stream_run
    result = cli("evaluate", run, "--data", series, "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    with (tmp_path / "e" / "points.csv").open() as handle:
        expected = [float(row["score"]) for row in csv.DictReader(handle)]
    result = cli("monitor", run, series, "--out", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output
    assert "monitored 900 rows" in result.stderr and "0 malformed" in result.stderr
    with (tmp_path / "m.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["line"] for row in rows[:2]] == ["2", "3"] and rows[0][
        "time"
    ] == "2024-01-01 00:00"  # as the input wrote it
    np.testing.assert_allclose([float(row["score"]) for row in rows], expected, rtol=1e-5, atol=1e-6)
    assert [row["flagged"] for row in rows].count("1") >= 1 and rows[702]["flagged"] == "1"
    result = cli("monitor", run, series, "--out", tmp_path / "m.csv")
    assert result.exit_code == 2 and "already exists" in result.output
    result = cli("score", run, series, "--out", tmp_path / "s.csv")  # a series run: the same rows, read alike
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.csv").read_text() == (tmp_path / "m.csv").read_text()

    lines = series.read_bytes().split(b"\n")
    lines[5] = b"2024-01-01 00:20:00,abc"  # not a number
    lines[6] = b"2024-01-01 00:25:00,1,2"  # a column too many
    lines[7] = b"\xff\xfe,1"  # not UTF-8
    (tmp_path / "bad.csv").write_bytes(b"\n".join(lines))
    result = cli("monitor", run, tmp_path / "bad.csv", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert "line 6: a value is not a number" in result.stderr and "line 7: 3 columns, expected 2" in result.stderr
    assert "line 8: not UTF-8" in result.stderr and "3 malformed line(s) skipped" in result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entries) == 897 and entries[0] == {
        "line": 2,
        "time": "2024-01-01 00:00",
        "value": pytest.approx(10.0, abs=1.0),
        "score": 0.0,
        "flagged": False,
    }


def test_a_monitor_restarted_with_its_state_continues_where_it_stopped(
    stream_run: tuple[Path, Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, series, _ = stream_run
    lines = series.read_text().splitlines()
    (tmp_path / "first.csv").write_text("\n".join(lines[:601]) + "\n")  # the header and 600 rows
    (tmp_path / "rest.csv").write_text("\n".join([lines[0], *lines[601:]]) + "\n")
    state = tmp_path / "stream.json"
    for part in ("first", "rest"):
        result = cli("monitor", run, tmp_path / f"{part}.csv", "--state", state, "--out", tmp_path / f"{part}.out")
        assert result.exit_code == 0, result.output
    assert cli("monitor", run, series, "--out", tmp_path / "whole.out").exit_code == 0

    def scores(name: str) -> list[float]:
        with (tmp_path / name).open() as handle:
            return [float(row["score"]) for row in csv.DictReader(handle)]

    np.testing.assert_allclose(scores("first.out") + scores("rest.out"), scores("whole.out"), rtol=1e-9, atol=1e-12)
    saved = json.loads(state.read_text())
    saved["run"] = "another"
    state.write_text(json.dumps(saved))
    result = cli("monitor", run, tmp_path / "rest.csv", "--state", state)
    assert result.exit_code == 2 and "cannot continue from it: it was written for another run" in result.output


def test_monitor_reads_stdin_as_rows_arrive_and_stops_cleanly_on_sigterm(
    stream_run: tuple[Path, Path, Path],
) -> None:
    run, series, _ = stream_run
    lines = series.read_text().splitlines()
    aecli = Path(sys.executable).parent / "aecli"
    process = subprocess.Popen(
        [str(aecli), "monitor", str(run), "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("\n".join(lines[:101]) + "\n")  # the header and 100 rows, and the pipe stays open
    process.stdin.flush()
    header = process.stdout.readline()
    written = [process.stdout.readline() for _ in range(100)]  # each row is written before more arrive
    assert header.startswith("line,time,value,score,flagged") and written[-1].startswith("101,")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and "stopped: every row read so far was scored and written" in stderr
    assert "Traceback" not in stderr


def test_monitor_refuses_what_it_cannot_score(
    stream_run: tuple[Path, Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, series, _ = stream_run
    result = cli("monitor", run, series, "--threshold", "percentile:99")
    assert result.exit_code == 2 and "scores likelihoods (anomaly.likelihood): give a number" in result.output
    result = cli("monitor", run, tmp_path / "missing.csv")
    assert result.exit_code == 2 and "no such file" in result.output
    (tmp_path / "other.csv").write_text("when,level\n2024-01-01 00:00:00,1\n")
    result = cli("monitor", run, tmp_path / "other.csv")
    assert (
        result.exit_code == 2 and "no column 'timestamp'" in result.output and "columns: when, level" in result.output
    )
    result = cli("monitor", run, series, "--format", "xml")
    assert result.exit_code == 2 and "--format 'xml': expected one of csv, jsonl" in result.output
