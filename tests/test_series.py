"""Time series: reading and checking series files, splits by time, windows, per-channel scaling,
the sequence models, anomalies located in time, and the commands on a series run."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from aecli.config import SeriesConfig, build_config
from aecli.data import load_dataset, peek_sample_shape
from aecli.data.arrays import Timeline, time_text
from aecli.data.series import read_series_table, window_starts
from aecli.data.sources import read_data
from aecli.errors import ConfigError, DataError
from aecli.models import build_autoencoder, count_parameters, plan_autoencoder
from aecli.time_anomalies import (
    detection_report,
    labels_from_windows,
    locate_anomalies,
    ranges_of,
    step_scores,
    stitch_windows,
    stretch_steps,
)

START = np.datetime64("2024-01-01T00:00")
STEP = np.timedelta64(5, "m")


def write_series(path: Path, values: np.ndarray, labels: np.ndarray | None = None, times: Any = None) -> Path:
    """A series CSV with a timestamp column every 5 minutes (or the given times)."""
    values = values.reshape(len(values), -1)
    times = START + STEP * np.arange(len(values)) if times is None else times
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        names = ["value"] if values.shape[1] == 1 else [f"v{i}" for i in range(values.shape[1])]
        writer.writerow(["timestamp", *names, *(["label"] if labels is not None else [])])
        for index, row in enumerate(values):
            extra = [int(labels[index])] if labels is not None else []
            writer.writerow([str(times[index]).replace("T", " "), *(f"{v:.6f}" for v in row), *extra])
    return path


def periodic(steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10 + 5 * np.sin(np.arange(steps) * 2 * np.pi / 24) + rng.normal(0, 0.2, steps)


def series_config(source: Path, **data: Any) -> Any:
    base = {"source": str(source), "series": {"time_column": "timestamp"}, "window": {"size": 24}, **data}
    return build_config(base={"data": base}).data


# Reading and checking


def test_a_series_is_read_with_its_times_and_gaps_are_reported(tmp_path: Path) -> None:
    times = START + STEP * np.r_[np.arange(50), np.arange(60, 100)]  # 10 steps missing after step 49
    path = write_series(tmp_path / "s.csv", periodic(90), times=times)
    with pytest.raises(
        DataError, match=r"column 1 \(timestamp\) is not a number: .* name its column in data.series.time_column"
    ):
        read_series_table(path, SeriesConfig())
    table = read_series_table(tmp_path / "s.csv", SeriesConfig(time_column="timestamp"))
    assert table.values.shape == (90, 1) and table.timed and table.columns == ["value"]
    assert table.times[0] == START and table.times.dtype == np.dtype("datetime64[s]")
    assert len(table.notes) == 1 and "1 gap(s)" in table.notes[0] and "2024-01-01 04:05:00" in table.notes[0]


def test_repeated_and_backward_times_are_kept_in_arrival_order_or_dropped_with_a_note(tmp_path: Path) -> None:
    values = periodic(40)
    times = START + STEP * np.arange(40)
    times[11] = times[10]  # a repeated time (a daylight-saving hour)
    times[21] = times[5]  # a clock glitch: a time from the past
    path = write_series(tmp_path / "s.csv", values, times=times)
    kept = read_series_table(path, SeriesConfig(time_column="timestamp"))
    assert len(kept.times) == 40 and kept.times[21] == times[5]  # arrival order, never reordered
    assert any("2 row(s)" in note and "kept in arrival order" in note and "line 13" in note for note in kept.notes)
    dropped = read_series_table(path, SeriesConfig(time_column="timestamp", disorder="drop"))
    assert len(dropped.times) == 38 and (np.diff(dropped.times) > np.timedelta64(0)).all()
    np.testing.assert_allclose(dropped.values[:, 0], np.delete(values, [11, 21]), rtol=1e-6)
    assert any("dropped" in note for note in dropped.notes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], r"line 3 has a time earlier than line 2 .*disorder"),
        (lambda lines: [lines[0], lines[1], lines[1], *lines[2:]], "line 3 has the same time as line 2"),
        (
            lambda lines: [lines[0], lines[1].replace("2024-01-01 00:00", "yesterday"), *lines[2:]],
            "line 2: 'yesterday' is not an ISO 8601 time",
        ),
        (
            lambda lines: [lines[0], lines[1].split(",")[0] + ",abc", *lines[2:]],
            r"line 2, column 2 \(value\) is not a number: 'abc'",
        ),
        (
            lambda lines: [lines[0], lines[1].split(",")[0] + ",", *lines[2:]],
            "line 2 has no value for value .*data.series.missing",
        ),
        (lambda lines: [lines[0], lines[1] + ",7", *lines[2:]], "line 2 has 3 columns, expected 2"),
    ],
)
def test_hostile_series_files_get_one_line_errors(tmp_path: Path, edit: Callable[..., list[str]], message: str) -> None:
    path = write_series(tmp_path / "s.csv", periodic(60))
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(DataError, match=message):
        read_series_table(path, SeriesConfig(time_column="timestamp", disorder="refuse"))


def test_missing_values_are_filled_only_when_asked(tmp_path: Path) -> None:
    values = np.arange(10, dtype=float)
    path = write_series(tmp_path / "s.csv", values)
    lines = path.read_text().splitlines()
    lines[4] = lines[4].split(",")[0] + ",nan"  # step 3
    lines[1] = lines[1].split(",")[0] + ","  # step 0: nothing before it
    path.write_text("\n".join(lines) + "\n")
    interpolated = read_series_table(path, SeriesConfig(time_column="timestamp", missing="interpolate"))
    assert interpolated.values[:5, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 4.0]
    carried = read_series_table(path, SeriesConfig(time_column="timestamp", missing="ffill"))
    assert carried.values[:5, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 4.0]
    assert "2 missing value(s) filled" in carried.notes[0]


def test_a_label_column_marks_anomalous_steps(tmp_path: Path) -> None:
    labels = np.zeros(30, bool)
    labels[10:13] = True
    path = write_series(tmp_path / "s.csv", periodic(30), labels)
    table = read_series_table(path, SeriesConfig(time_column="timestamp"), label_column="label")
    assert table.labels is not None and table.labels.tolist() == labels.tolist()
    path.write_text(path.read_text().replace(",1\n", ",maybe\n", 1))
    with pytest.raises(DataError, match="label 'maybe'; a series' label column marks anomalous steps"):
        read_series_table(path, SeriesConfig(time_column="timestamp"), label_column="label")


# Windows, splits by time, scaling


def test_splits_are_consecutive_stretches_in_time_scaled_with_the_training_stretch(tmp_path: Path) -> None:
    values = np.r_[np.full(100, 1.0), np.full(100, 3.0)] + np.tile([0.0, 1.0], 100)
    cfg = series_config(write_series(tmp_path / "s.csv", values), validation_split=0.2, test_split=0.2)
    data = load_dataset(cfg, seed=0)
    assert data.sample_shape == (24, 1) and not data.is_image
    timelines = data.timelines
    assert (timelines["train"].offset, timelines["validation"].offset, timelines["test"].offset) == (0, 120, 160)
    # training windows never reach past the training stretch: no future leaks into training
    assert data.source_rows["train"].max() + 24 <= 120 and data.source_rows["test"].min() >= 160
    # z-score from the training stretch only (its values are 1 and 2 and the first 20 3s and 4s)
    train_values = values[:120]
    assert data.scaling.kind == "zscore"
    assert data.scaling.offset.shape == (1, 1) and data.scaling.offset[0, 0] == pytest.approx(train_values.mean())
    # every test step is covered: the last window ends at the last step
    assert data.source_rows["test"][-1] + 24 == 200
    assert data.ids["test"][0] == "2024-01-01 13:20:00"


def test_a_stream_learns_from_its_probationary_period_only(tmp_path: Path) -> None:
    path = write_series(tmp_path / "s.csv", periodic(2000))
    data = load_dataset(series_config(path, series={"time_column": "timestamp", "learn": "probation"}), seed=0)
    timelines = data.timelines  # NAB's rule: min(15% of 2,000 rows, 750) = 300 rows, split as configured
    assert timelines["test"].offset + len(timelines["test"].times) == 300
    assert any("learning from the first 300 of 2000 rows" in note for note in data.description["notes"])
    long = write_series(tmp_path / "long.csv", periodic(6000))
    data = load_dataset(series_config(long, series={"time_column": "timestamp", "learn": "probation"}), seed=0)
    assert data.timelines["test"].offset + len(data.timelines["test"].times) == 750


def test_multivariate_series_are_scaled_per_channel(tmp_path: Path) -> None:
    values = np.stack([periodic(300), 1000 + 100 * periodic(300, seed=1)], axis=1)
    data = load_dataset(series_config(write_series(tmp_path / "s.csv", values)), seed=0)
    assert data.sample_shape == (24, 2) and data.scaling.offset.shape == (1, 2)
    assert np.abs(data.x_train.reshape(-1, 2).mean(axis=0)).max() < 0.2
    assert np.allclose(data.x_train.reshape(-1, 2).std(axis=0), 1.0, atol=0.2)


def test_windows_cannot_outgrow_the_series(tmp_path: Path) -> None:
    path = write_series(tmp_path / "s.csv", periodic(100))
    with pytest.raises(DataError, match=r"its test stretch \(data.test_split\) has 20, too few for one window"):
        load_dataset(series_config(path, window={"size": 30}, validation_split=0.0), seed=0)
    with pytest.raises(DataError, match="the series has 100 steps"):
        load_dataset(series_config(path, window={"size": 200}), seed=0)
    assert peek_sample_shape(series_config(path)) == (24, 1)


def test_window_starts_cover_the_end_when_scoring() -> None:
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(11, 4, 3, cover_end=True).tolist() == [0, 3, 6, 7]
    assert window_starts(3, 4, 1, cover_end=True).tolist() == []


def test_series_options_are_checked_in_the_config() -> None:
    with pytest.raises(ConfigError, match="data.window: applies to a series source"):
        build_config(base={"data": {"window": {"size": 10}}})
    with pytest.raises(ConfigError, match="anomaly.points: applies to a series source"):
        build_config(base={"anomaly": {"points": "all"}})
    with pytest.raises(ConfigError, match="anomaly.threshold: 'p95'"):
        build_config(base={"anomaly": {"threshold": "p95"}})
    with pytest.raises(ConfigError, match="classes: does not apply to a series source"):
        build_config(base={"data": {"source": "x.csv", "series": True, "classes": [1]}})
    with pytest.raises(ConfigError, match="augment: image augmentation does not apply to time series"):
        build_config(base={"data": {"source": "x.csv", "series": True, "augment": {"zoom": 0.1}}})
    config = build_config(base={"data": {"source": "x.csv", "series": True}})
    assert config.model.output_activation == "linear"  # z-scored by default: not in [0, 1]


# Sequences, one per row (UCR layout)


def test_sequences_one_per_row_with_the_label_first_or_last(tmp_path: Path) -> None:
    (tmp_path / "ucr.txt").write_text("  1  0.5  0.25 -1.0\n  2  1e-1 0.0  2.0\n\n")
    raw = read_data(build_config(base={"data": {"source": str(tmp_path / "ucr.txt"), "sequences": True}}).data)
    assert raw.x_train.shape == (2, 3, 1) and raw.y_train.tolist() == [1, 2] and raw.sequences
    (tmp_path / "last.csv").write_text("0.5,0.25,-1.0,normal\n0.1,0.0,2.0,odd\n")
    cfg = build_config(base={"data": {"source": str(tmp_path / "last.csv"), "sequences": {"label": "last"}}}).data
    raw = read_data(cfg)
    assert raw.label_names == ["normal", "odd"] and raw.x_train[1, :, 0].tolist() == [0.1, 0.0, 2.0]
    assert peek_sample_shape(cfg) == (3, 1)
    (tmp_path / "ragged.txt").write_text("1 0.5 0.25\n2 0.1\n")
    with pytest.raises(DataError, match="line 2 has 2 values, line 1 has 3; sequences must all have the same length"):
        read_data(build_config(base={"data": {"source": str(tmp_path / "ragged.txt"), "sequences": True}}).data)
    (tmp_path / "bad.txt").write_text("1 0.5 0.25\n2 0.1 x\n")
    with pytest.raises(DataError, match="line 2, value 2 is not a number: 'x'"):
        read_data(build_config(base={"data": {"source": str(tmp_path / "bad.txt"), "sequences": True}}).data)


def test_sequences_are_scaled_per_channel_and_keep_their_shape(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).normal(5, 2, (40, 16))
    np.savetxt(tmp_path / "s.txt", np.c_[np.arange(40) % 2, rows])
    data = load_dataset(build_config(base={"data": {"source": str(tmp_path / "s.txt"), "sequences": True}}).data, 0)
    assert data.sample_shape == (16, 1) and not data.is_image
    assert data.scaling.kind == "minmax" and data.scaling.offset.shape == (1, 1)
    assert data.x_train.min() == pytest.approx(0.0) and data.x_train.max() == pytest.approx(1.0)


# Models


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        ({"kind": "conv1d", "filters": [8, 4], "kernel_size": 5, "dropout": 0.1}, (32, 2)),
        ({"kind": "conv1d", "filters": [8], "downsample": "maxpool"}, (30, 1)),
        ({"kind": "lstm", "encoder": [8, 6], "latent_dim": 4}, (12, 3)),
        ({"kind": "gru", "encoder": [8], "latent_dim": 4}, (12, 1)),
        ({"kind": "dense", "encoder": [16], "latent_dim": 4}, (12, 3)),
        ({"kind": "conv1d", "filters": [32, 16], "kernel_size": 7, "code": "feature_map"}, (288, 1)),
        ({"kind": "conv", "filters": [8, 4], "code": "feature_map", "downsample": "maxpool"}, (16, 16, 1)),
    ],
)
def test_sequence_models_mirror_the_window_and_count_their_parameters(model: dict[str, Any], shape: tuple) -> None:
    config = build_config(base={"model": model, "data": {"source": "x.csv", "series": True}}).model
    plan = plan_autoencoder(config, shape)
    autoencoder = build_autoencoder(config, shape, plan=plan)
    assert autoencoder.model.output_shape == (None, *shape)
    if config.code == "feature_map":  # the last block's output: each block halves every spatial size
        spatial = tuple(size // 2 ** len(config.filters) for size in shape[:-1])
        assert autoencoder.encoder.output_shape == (None, *spatial, config.filters[-1])
        assert not any(spec.kind == "Dense" for spec in plan)
    else:
        assert autoencoder.encoder.output_shape == (None, config.latent_dim)
    assert count_parameters(plan) == autoencoder.model.count_params()
    if model.get("kernel_size") == 7:
        assert count_parameters(plan) == 9_505  # the Keras time-series example's model


def test_a_feature_map_code_takes_no_dense_knobs() -> None:
    with pytest.raises(ConfigError, match="latent_dim: does not apply with code feature_map"):
        build_config(base={"model": {"kind": "conv1d", "code": "feature_map", "latent_dim": 8}})
    with pytest.raises(ConfigError, match="code: applies to model.kind conv and conv1d only"):
        build_config(base={"model": {"kind": "vae", "code": "feature_map"}})
    with pytest.raises(ConfigError, match="sparsity and activity_l1 act on a dense code"):
        build_config(base={"model": {"kind": "conv", "code": "feature_map", "regularization": {"activity_l1": 1e-5}}})


def test_sequence_models_refuse_other_data() -> None:
    conv1d = build_config(base={"model": {"kind": "conv1d", "filters": [8, 8, 8]}}).model
    with pytest.raises(ConfigError, match="needs sequences .* but this data is images"):
        plan_autoencoder(conv1d, (28, 28, 1))
    with pytest.raises(ConfigError, match="3 down-sampling blocks cannot be mirrored on windows of 20 steps"):
        plan_autoencoder(conv1d, (20, 1))
    lstm = build_config(base={"model": {"kind": "lstm"}}).model
    with pytest.raises(ConfigError, match="tabular rows of 64 features"):
        plan_autoencoder(lstm, (64,))


# Anomalies in time


def test_step_scores_from_the_windows_covering_each_step() -> None:
    starts, scores = np.array([0, 2, 4]), np.array([1.0, 5.0, 3.0])  # windows of 3 over 7 steps
    assert step_scores(scores, starts, 3, 7, "mean").tolist() == [1, 1, 3, 5, 4, 3, 3]
    assert step_scores(scores, starts, 3, 7, "max").tolist() == [1, 1, 5, 5, 5, 3, 3]
    assert step_scores(scores, starts, 3, 7, "all").tolist() == [1, 1, 1, 5, 3, 3, 3]
    causal = step_scores(scores, starts, 3, 7, "last")  # the window ending at the step; none ends at 0, 1, 3, 5
    assert np.isnan(causal[[0, 1, 3, 5]]).all() and causal[[2, 4, 6]].tolist() == [1, 5, 3]
    assert np.isnan(step_scores(scores, starts, 3, 8, "mean")[7])


def test_flagged_ranges_and_detection_against_labelled_windows() -> None:
    times = (START + STEP * np.arange(12)).astype("datetime64[s]")
    timeline = Timeline(times, np.zeros((12, 1)), np.arange(10), 3, ["value"], True)
    window_scores = np.array([0, 0, 0, 2, 2, 0, 0, 0, 2, 0], float)  # windows 3, 4 and 8 (of 3 steps) are over
    found = locate_anomalies(window_scores, timeline, threshold=1.0, points="max")
    assert found.ranges == [(3, 6), (8, 10)]
    assert found.range_rows(timeline)[0] == {
        "start": "2024-01-01 00:15:00",
        "end": "2024-01-01 00:30:00",
        "steps": 4,
        "peak_time": "2024-01-01 00:15:00",
        "peak_score": 2.0,
    }
    labels = np.zeros(12, bool)
    labels[4:8] = True  # flagged from its first step; the range 8-10 lies outside it
    report = detection_report(found, labels, timeline)
    assert report["windows_detected"] == 1 and report["ranges_outside_windows"] == 1
    assert report["windows"][0]["delay_steps"] == 0 and report["windows"][0]["first_flag"] == "2024-01-01 00:20:00"
    assert report["point_recall"] == pytest.approx(3 / 4) and report["point_precision"] == pytest.approx(3 / 7)
    assert ranges_of(np.array([True, False, True, True])) == [(0, 0), (2, 3)]


def test_stitched_reconstruction_averages_the_covering_windows() -> None:
    timeline = Timeline(np.arange(5.0), np.zeros((5, 1)), np.array([0, 2]), 3, ["v"], False)
    windows = np.array([[[1.0], [2.0], [3.0]], [[5.0], [6.0], [7.0]]])
    assert stitch_windows(windows, timeline)[:, 0].tolist() == [1.0, 2.0, 4.0, 6.0, 7.0]


def test_nab_windows_files_name_the_evaluated_file(tmp_path: Path) -> None:
    timeline = Timeline(START + STEP * np.arange(10), np.zeros((10, 1)), np.arange(8), 3, ["value"], True)
    path = tmp_path / "windows.json"
    path.write_text(
        json.dumps({"realKnownCause/x.csv": [], "group/s.csv": [["2024-01-01 00:10:00.000000", "2024-01-01 00:20:00"]]})
    )
    assert labels_from_windows(path, "/data/s.csv", timeline).tolist() == [False] * 2 + [True] * 3 + [False] * 5
    with pytest.raises(DataError, match="has no entry for other.csv; it names realKnownCause/x.csv, group/s.csv"):
        labels_from_windows(path, "other.csv", timeline)
    path.write_text(json.dumps({"s.csv": [["2024-01-01 00:20:00", "2024-01-01 00:10:00"]]}))
    with pytest.raises(DataError, match="window 1 of s.csv ends before it starts"):
        labels_from_windows(path, "s.csv", timeline)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="NAB's layout"):
        labels_from_windows(path, "s.csv", timeline)


# The commands on a series run


@pytest.fixture(scope="module")
def series_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A conv1d run on a periodic series, and a later stretch of it with a jump."""
    from typer.testing import CliRunner

    from aecli.cli import app

    folder = tmp_path_factory.mktemp("series")
    write_series(folder / "normal.csv", periodic(600))
    jump = periodic(300, seed=1)
    jump[150:170] += 15
    labels = np.zeros(300, bool)
    labels[145:175] = True
    write_series(folder / "jump.csv", jump, labels)
    config = {
        "data": {
            "source": str(folder / "normal.csv"),
            "series": {"time_column": "timestamp"},
            "window": {"size": 24, "stride": 2},
        },
        "model": {"kind": "conv1d", "filters": [8, 8], "kernel_size": 5, "latent_dim": 8},
        "training": {"epochs": 4, "batch_size": 32},
        "anomaly": {"score": "mae", "threshold": "max", "points": "all"},
    }
    (folder / "series.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(
        app, ["train", str(folder / "series.yaml"), "--runs-dir", str(folder / "runs"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1]), folder / "jump.csv"


def test_evaluate_locates_the_jump_in_time(
    series_run: tuple[Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, jump = series_run
    result = cli("evaluate", run, "--data", jump, "--set", "data.label_column=label", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    in_time = metrics["anomalies_in_time"]
    assert in_time["score"] == "mae" and in_time["points"] == "all" and in_time["threshold_spec"] == "max"
    with (run / "train_errors.csv").open() as handle:
        train_errors = [float(row["mae"]) for row in csv.DictReader(handle)]
    assert in_time["threshold"] == pytest.approx(max(train_errors), rel=1e-5)
    assert in_time["steps"] == 300 and len(in_time["ranges"]) >= 1
    detection = in_time["detection"]  # from the file's label column
    assert detection["windows_detected"] == 1 and detection["ranges_outside_windows"] == 0
    with (tmp_path / "eval" / "anomalies.csv").open() as handle:
        ranges = list(csv.DictReader(handle))
    assert ranges[0]["start"] >= "2024-01-01 12:05:00" and ranges[0]["end"] <= "2024-01-01 14:35:00"
    with (tmp_path / "eval" / "points.csv").open() as handle:
        points = list(csv.DictReader(handle))
    assert len(points) == 300 and points[150]["flagged"] == "1" and points[10]["flagged"] == "0"
    assert (tmp_path / "eval" / "anomalies.png").stat().st_size > 10_000
    assert "Anomalies in time" in (tmp_path / "eval" / "report.html").read_text()


def test_evaluate_takes_nab_windows_and_refuses_sample_labels(
    series_run: tuple[Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, jump = series_run
    windows = tmp_path / "windows.json"
    windows.write_text(json.dumps({"jump.csv": [["2024-01-01 12:00:00", "2024-01-01 14:00:00"]]}))
    result = cli(
        "evaluate", run, "--data", jump, "--anomaly-windows", windows, "--points", "max", "--out", tmp_path / "e"
    )
    assert result.exit_code == 0, result.output
    in_time = json.loads((tmp_path / "e" / "metrics.json").read_text())["anomalies_in_time"]
    detection = in_time["detection"]
    assert detection["labelled_windows"] == 1 and detection["labelled_steps"] == 25
    nab = in_time["nab"]  # NAB's three profiles, at the run's threshold and at this file's best
    assert set(nab) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert all(-1000 < entry["at_threshold"] <= entry["best"] <= 100 for entry in nab.values())
    assert nab["standard"]["best"] > 50  # the jump is found early in its window
    assert "NAB score (standard)" in result.output
    windows.write_text(json.dumps({"normal.csv": []}))
    result = cli("evaluate", run, "--data", jump, "--anomaly-windows", windows)
    assert result.exit_code == 2 and "has no entry for jump.csv; it names normal.csv" in result.output
    result = cli("evaluate", run, "--normal-classes", "0")
    assert result.exit_code == 2 and "a series run's anomalies are steps in time" in result.output
    result = cli("evaluate", run, "--points", "median")
    assert result.exit_code == 2 and "--points 'median': expected one of mean, max, all, last" in result.output


def test_reconstruct_a_time_range_and_embed_the_windows(
    series_run: tuple[Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, jump = series_run
    result = cli("reconstruct", run, jump, "--range", "2024-01-01 12:00,2024-01-01 13:00", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "reconstructed 13 steps from" in result.output
    with (tmp_path / "r" / "series.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 13 and rows[0]["time"] == "2024-01-01 12:00:00" and rows[0]["step"] == "144"
    assert float(rows[0]["value_reconstructed"]) == pytest.approx(float(rows[0]["value"]), abs=15)
    result = cli("reconstruct", run, "--range", "2030-01-01 00:00,2030-01-02 00:00")
    assert result.exit_code == 2 and "no step of the series lies in it" in result.output
    result = cli("embed", run, jump, "--out", tmp_path / "codes.csv")
    assert result.exit_code == 0, result.output
    with (tmp_path / "codes.csv").open() as handle:
        codes = list(csv.DictReader(handle))
    assert len(codes) == len(window_starts(300, 24, 2, cover_end=True)) and codes[1]["id"] == "2024-01-01 00:10:00"
    assert list(codes[0])[-1] == "z7"
    result = cli("embed", run, jump, "--out", tmp_path / "codes.csv")
    assert result.exit_code == 2 and "already exists" in result.output
    result = cli("embed", run, jump, "--out", tmp_path / "codes.npy")
    assert result.exit_code == 0 and np.load(tmp_path / "codes.npy").shape == (len(codes), 8)


def test_hostile_series_inputs_to_a_trained_run(
    series_run: tuple[Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    run, _ = series_run
    short = write_series(tmp_path / "short.csv", periodic(10))
    result = cli("evaluate", run, "--data", short)
    assert result.exit_code == 2 and "10 steps, fewer than one window of 24" in result.output
    two = write_series(tmp_path / "two.csv", np.stack([periodic(50), periodic(50)], axis=1))
    result = cli("embed", run, two)
    assert (
        result.exit_code == 2
        and "no column 'value' in" in result.output
        and "columns: timestamp, v0, v1" in result.output
    )
    result = cli("embed", run, two, "--set", "data.series.value_columns=[v0, v1]")
    assert result.exit_code == 2 and "2 value column(s) (v0, v1), but the model was trained on 1" in result.output


def test_prepare_writes_series_windows_as_sequences(tmp_path: Path, cli: Callable[..., Any]) -> None:
    source = write_series(tmp_path / "s.csv", periodic(100))
    result = cli(
        "prepare", source, tmp_path / "shards", "--format", "npy",
        "--set", "data.series.time_column=timestamp", "--set", "data.window.size=16", "--set", "data.window.stride=4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["layout"] == "sequences"
    cfg = build_config(base={"data": {"source": str(tmp_path / "shards")}}).data
    assert peek_sample_shape(cfg) == (16, 1)
    data = load_dataset(cfg, seed=0)
    assert data.sample_shape == (16, 1) and data.scaling.offset.shape == (1, 1)


def test_a_sequences_run_reports_anomalies_with_the_normal_class_positive_too(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 40)
    normal = np.sin(2 * np.pi * t) + rng.normal(0, 0.05, (300, 40))
    odd = np.sign(np.sin(6 * np.pi * t)) * 2 + rng.normal(0, 0.05, (100, 40))
    rows = np.r_[np.c_[normal, np.ones(300)], np.c_[odd, np.zeros(100)]]
    np.savetxt(tmp_path / "beats.csv", rng.permutation(rows), delimiter=",", fmt="%.4f")
    config = {
        "data": {"source": str(tmp_path / "beats.csv"), "sequences": {"label": "last"}, "classes": [1]},
        "model": {"encoder": [16], "latent_dim": 4},
        "training": {"epochs": 5, "batch_size": 32},
        "anomaly": {"score": "mae", "threshold": "mean_std:1"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = cli("train", tmp_path / "c.yaml", "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    result = cli("evaluate", run, "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    anomaly = json.loads((tmp_path / "e" / "metrics.json").read_text())["anomaly"]
    assert anomaly["score"] == "mae" and anomaly["threshold_spec"] == "mean_std:1"
    assert anomaly["auroc"] > 0.9 and anomaly["accuracy"] > 0.8
    assert 0 < anomaly["normal_precision"] <= 1 and 0 < anomaly["normal_recall"] <= 1


def test_numeric_clocks_headerless_files_and_time_zones(tmp_path: Path) -> None:
    epoch = tmp_path / "epoch.csv"
    epoch.write_text("".join(f"{1396000000 + 300 * i},{i % 7}\n" for i in range(100)))  # no header
    data = load_dataset(series_config(epoch, series={"time_column": 0}, window={"size": 8}), seed=0)
    assert data.ids["train"][:2].tolist() == ["1396000000", "1396000300"]
    dated = tmp_path / "dated.csv"
    dated.write_text("".join(f"{1 + i // 24:02d}/01/2020 {i % 24:02d}:00,{i}\n" for i in range(30)))
    table = read_series_table(dated, SeriesConfig(time_column=0, time_format="%d/%m/%Y %H:%M"))
    assert len(table.values) == 30 and table.values[0, 0] == 0.0  # the first row is data, not a header
    for rows, message in (
        ("t,v\n2020-01-01T00:00:00+02:00,1\n2020-01-01T00:30:00,2\n", "mixes times with and without a time zone"),
        ("t,v\n1,1\nnan,2\n3,3\n", "line 3 has no time"),
        ("t,v\n1,1\ninf,2\n", "line 3's time is not a finite number"),
        ("t,v\n2020-13-01T00:00:00+01:00,1\n", "is not an ISO 8601 time"),
    ):
        (tmp_path / "bad.csv").write_text(rows)
        with pytest.raises(DataError, match=message):
            read_series_table(tmp_path / "bad.csv", SeriesConfig(time_column="t"))


def test_times_with_a_utc_offset_keep_it_in_every_output(tmp_path: Path) -> None:
    rows = [f"2020-10-25T0{hour}:{minute}:00+02:00" for hour in (0, 1) for minute in ("00", "30")]
    rows += ["2020-10-25T02:00:00+01:00"]  # the clocks went back: 03:00 in the file's first offset
    path = tmp_path / "zoned.csv"
    path.write_text("t,v\n" + "".join(f"{moment},{i}\n" for i, moment in enumerate(rows)))
    table = read_series_table(path, SeriesConfig(time_column="t"))
    assert table.zone == "+02:00"
    assert time_text(table.times, True, table.zone).tolist() == [
        "2020-10-25 00:00:00+02:00",
        "2020-10-25 00:30:00+02:00",
        "2020-10-25 01:00:00+02:00",
        "2020-10-25 01:30:00+02:00",
        "2020-10-25 03:00:00+02:00",
    ]
    timeline = Timeline(table.times, table.values, np.arange(3), 3, ["v"], True, zone=table.zone)
    assert stretch_steps("2020-10-25 00:30,2020-10-25 01:00", timeline) == (1, 2)  # the file's own clock
    assert stretch_steps("2020-10-24T22:30:00Z,2020-10-24T23:00:00Z", timeline) == (1, 2)  # converted to it
    naive = Timeline(table.times, table.values, np.arange(3), 3, ["v"], True)
    with pytest.raises(DataError, match="have no UTC offset"):
        stretch_steps("2020-10-24T22:30:00Z,2020-10-24T23:00:00Z", naive)


def test_thresholds_are_recorded_exactly() -> None:
    for spec in ("percentile:99.999995", "0.0123456789", "mean_std:1", "max", "1234567.5"):
        assert build_config(base={"anomaly": {"threshold": spec}}).anomaly.threshold == spec


def test_sequences_headers_and_limits(tmp_path: Path) -> None:
    (tmp_path / "h.txt").write_text("label a b c\n1 0.1 0.2 0.3\n2 0.4 0.5 0.6\n3 0.7 0.8 0.9\n")
    cfg = build_config(base={"data": {"source": str(tmp_path / "h.txt"), "sequences": True, "limit": 2}}).data
    assert read_data(cfg, limit=2).x_train.shape == (2, 3, 1)
    (tmp_path / "bad.txt").write_text("1 x 0.2 0.3\n2 0.4 0.5 0.6\n")
    with pytest.raises(DataError, match="line 1, value 1 is not a number: 'x'"):
        read_data(build_config(base={"data": {"source": str(tmp_path / "bad.txt"), "sequences": True}}).data)


def test_numbers_in_a_windows_file_of_a_timed_series_are_refused(tmp_path: Path) -> None:
    timeline = Timeline(START + STEP * np.arange(10), np.zeros((10, 1)), np.arange(8), 3, ["value"], True)
    (tmp_path / "w.json").write_text(json.dumps({"s.csv": [[1577836800, 1577840400]]}))
    with pytest.raises(DataError, match="1577836800 is not a time"):
        labels_from_windows(tmp_path / "w.json", "s.csv", timeline)


def test_windows_too_large_for_memory_are_refused_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aecli.data.series as series

    path = write_series(tmp_path / "s.csv", periodic(300))
    monkeypatch.setattr(series, "memory_bytes", lambda: 10_000)  # 5 KB for windows
    with pytest.raises(DataError, match=r"windows of 24 steps need .* raise data.window.stride"):
        load_dataset(series_config(path), seed=0)
    monkeypatch.undo()
    data = load_dataset(series_config(path, window={"size": 24, "stride": 5}), seed=0)
    assert data.source_rows["train"][:3].tolist() == [0, 5, 10] and data.x_train.shape[1:] == (24, 1)
    assert np.allclose(data.x_train[1, :, 0], data.scaling.apply(periodic(300)[5:29, None])[:, 0])
