"""What a demanding user meets with real but awkward data: string labels, ids, files that change
under a run, a second process on the same run, odd images, a full disk, Ctrl-C at any moment.
Each test checks the behaviour a user expects, not only that nothing crashed."""

from __future__ import annotations

import csv
import gzip
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aecli.commands.reconstruct import _read_image
from aecli.config import DataConfig, load_config
from aecli.data import load_dataset, read_source
from aecli.errors import ConfigError
from aecli.runs import create_run_dir, run_lock
from tests.conftest import write_config


def last_line(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def pets_csv(path: Path, n: int = 120, kinds: tuple[str, ...] = ("cat", "dog"), seed: int = 0) -> Path:
    """id, two features and a string label: cats near (0.2, 0.2), dogs near (0.8, 0.8)."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "f1", "f2", "f3", "kind"])
        for i in range(n):
            kind = kinds[i % len(kinds)]
            centre = 0.2 if kind == "cat" else 0.8
            writer.writerow([f"pet-{i:04d}", *np.round(centre + 0.05 * rng.standard_normal(3), 4), kind])
    return path


@pytest.fixture(scope="module")
def cat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained on the cats of a CSV with string labels and an id column."""
    from typer.testing import CliRunner

    from aecli.cli import app

    folder = tmp_path_factory.mktemp("cats")
    data = pets_csv(folder / "pets.csv")
    config = write_config(
        folder,
        {
            "data": {"source": str(data), "label_column": "kind", "id_column": "id", "classes": ["cat"]},
            "model": {"encoder": [8], "latent_dim": 2},
            "training": {"epochs": 2, "batch_size": 16},
        },
    )
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(folder / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return last_line(result), data


def test_classes_are_selected_by_the_label_as_written(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{'x' if i % 2 else 1}\n" for i in range(40)))
    dataset = load_dataset(DataConfig(source=str(path), label_column="label", classes=[1]), seed=0)
    assert dataset.label_names == ["1", "x"]
    assert {dataset.label_names[code] for code in dataset.y_train} == {"1"}  # not position 1, which is "x"
    named = load_dataset(DataConfig(source=str(path), label_column="label", classes=["x"]), seed=0)
    assert {named.label_names[code] for code in named.y_train} == {"x"}


def test_a_run_trained_on_cats_flags_every_dog(cli, cat_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = cat_run
    dogs = pets_csv(tmp_path / "dogs.csv", n=30, kinds=("dog",), seed=1)
    result = cli("evaluate", run, "--data", dogs, "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    anomaly = json.loads((tmp_path / "ev" / "metrics.json").read_text())["anomaly"]
    assert anomaly["normal_classes"] == ["cat"] and anomaly["n_anomalies"] == 30 and anomaly["n_normal"] == 0
    rows = read_rows(tmp_path / "ev" / "errors.csv")
    assert {row["label"] for row in rows} == {"dog"} and all(row["is_anomaly"] == "1" for row in rows)


def test_per_sample_outputs_name_the_source_row_and_id(cat_run: tuple[Path, Path]) -> None:
    run, data = cat_run
    source = read_rows(data)
    for name in ("errors.csv", "train_errors.csv"):
        rows = read_rows(run / name)
        assert rows and all(source[int(row["source_row"])]["id"] == row["id"] for row in rows)
        assert all(source[int(row["source_row"])]["kind"] == row["label"] for row in rows)
    assert {row["label"] for row in read_rows(run / "train_errors.csv")} == {"cat"}


def test_reconstruct_reads_a_csv_the_way_the_run_does(cli, cat_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = cat_run
    result = cli("reconstruct", run, data, "--out", tmp_path / "rec")
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "rec" / "reconstructions.csv")
    assert len(rows) == 120 and rows[5]["input"] == "pets.csv[pet-0005]" and rows[5]["label"] == "dog"


def test_anomaly_data_is_read_whole_and_labelled_as_such(cli, trained_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "noise.npy", rng.random((500, 8, 8)) * 16)  # more rows than the run's data.limit of 400
    result = cli("evaluate", trained_run, "--anomaly-data", tmp_path / "noise.npy", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["anomaly"]["n_anomalies"] == 500 and "all rows of" in metrics["data"]
    assert metrics["n_samples"] == metrics["anomaly"]["n_normal"] == 80  # reconstruction metrics: normal rows only
    assert metrics["anomaly_data_reconstruction"]["n_samples"] == 500
    rows = read_rows(tmp_path / "ev" / "errors.csv")
    assert {row["label"] for row in rows[80:]} == {"anomaly (--anomaly-data)"}
    assert [row["source"] for row in rows[78:82]] == ["evaluated", "evaluated", "anomaly-data", "anomaly-data"]
    limited = cli("evaluate", trained_run, "--anomaly-data", tmp_path / "noise.npy", "--set", "data.limit=50")
    assert (
        limited.exit_code == 0
        and "the first rows of" in json.loads((last_line(limited) / "metrics.json").read_text())["data"]
    )


def test_data_changed_under_a_run_is_refused_without_force(cli, tmp_path: Path) -> None:
    data = pets_csv(tmp_path / "pets.csv", n=60)
    config = write_config(tmp_path, {"data": {"source": str(data), "label_column": "kind", "id_column": "id"}})
    run = last_line(cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet"))
    recorded = json.loads((run / "run.json").read_text())["data"]["fingerprints"]
    assert list(recorded) == [str(data)] and len(recorded[str(data)]["sha256"]) == 64
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # same rows, another order
    refused = cli("evaluate", run)
    assert refused.exit_code == 2 and "changed since the run was trained" in refused.stderr
    assert cli("reconstruct", run, "--indices", "0").exit_code == 2
    assert not list(run.glob("eval-*")) and not list(run.glob("reconstruct-*"))
    assert cli("evaluate", run, "--force").exit_code == 0


def interrupted_copy(trained_run: Path, folder: Path) -> Path:
    run = Path(shutil.copytree(trained_run, folder / "run", ignore=shutil.ignore_patterns("eval-*", "reconstruct-*")))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    return run


def test_a_second_process_cannot_resume_a_run_being_trained(cli, trained_run: Path, tmp_path: Path) -> None:
    run = interrupted_copy(trained_run, tmp_path)
    before = (run / "run.json").read_text()
    with run_lock(run):
        result = cli("train", "--resume", run)
    assert result.exit_code == 2 and f"is being trained by process {os.getpid()}" in result.stderr
    assert (run / "run.json").read_text() == before


def test_a_refused_resume_leaves_the_run_as_it_was(cli, trained_run: Path, tmp_path: Path) -> None:
    run = interrupted_copy(trained_run, tmp_path)
    (run / "checkpoints" / "last.keras").write_bytes((run / "checkpoints" / "last.keras").read_bytes()[:500])
    before = (run / "run.json").read_text()
    result = cli("train", "--resume", run)
    assert result.exit_code == 2 and "last.keras is corrupt or truncated" in result.stderr
    assert (run / "run.json").read_text() == before


def test_a_full_disk_is_one_line_exit_3_and_the_run_resumes(tmp_path: Path) -> None:
    """`ulimit -f`: the first checkpoint cannot be written."""
    config = write_config(tmp_path, {"training": {"epochs": 2}})
    limit = 48 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "aecli", "train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert full.returncode == 3, full.stderr
    assert full.stderr.count("\n") == 1 and full.stderr.startswith("error: File too large")
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    resumed = subprocess.run([*command[:3], "train", "--resume", str(run)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [(KeyboardInterrupt, 130, "interrupted: no evaluation folder written"), (OSError(28, "No space left"), 3, "")],
)
def test_evaluate_stopped_midway_leaves_no_folder(
    cli, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised, code: int, message: str
) -> None:
    def stop(*args, **kwargs) -> None:
        raise raised

    monkeypatch.setattr("aecli.commands.evaluate.plot_latent", stop)  # after metrics.json and errors.csv
    out = tmp_path / "ev"
    result = cli("evaluate", trained_run, "--out", out)
    assert result.exit_code == code and message in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*")) and not list(trained_run.glob(".eval*"))
    monkeypatch.undo()
    assert cli("evaluate", trained_run, "--out", out).exit_code == 0  # the same --out is free


def test_images_keep_their_bit_depth_and_resizing_is_reported(tmp_path: Path) -> None:
    from PIL import Image

    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pixels, note = _read_image(tmp_path / "deep.png", (8, 8, 1))
    assert note is None and len(np.unique(pixels)) == 64 and pixels.min() == 0 and pixels.max() == 1
    Image.fromarray(np.zeros((60, 100), np.uint8)).save(tmp_path / "wide.png")
    _, note = _read_image(tmp_path / "wide.png", (8, 8, 1))
    assert note == "wide.png: resized from 100x60 to 8x8 (its aspect ratio changed)"


def idx_file(path: Path, array: np.ndarray, compress: bool) -> None:
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("images_gz", [True, False])
def test_idx_labels_are_found_compressed_or_not(tmp_path: Path, images_gz: bool) -> None:
    images = tmp_path / ("train-images-idx3-ubyte" + (".gz" if images_gz else ""))
    idx_file(images, np.zeros((5, 4, 4), np.uint8), images_gz)
    labels = tmp_path / ("train-labels-idx1-ubyte" + ("" if images_gz else ".gz"))
    idx_file(labels, np.arange(5, dtype=np.uint8), not images_gz)
    assert read_source(str(images)).y_train.tolist() == [0, 1, 2, 3, 4]


def test_yaml_reads_numbers_as_yaml_1_2_does(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: {learning_rate: 1e-3}\nmodel: {encoder: &widths [64, 32], decoder: *widths}\n")
    config = load_config(path)
    assert config.optimizer.learning_rate == 0.001 and config.model.decoder == [64, 32]
    path.write_text("training:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match="duplicate key 'epochs' \\(line 2 and line 3\\)"):
        load_config(path)


def test_run_names_keep_letters_of_any_script(tmp_path: Path) -> None:
    assert create_run_dir(tmp_path, "náme with space").name.startswith("náme-with-space-")
    assert create_run_dir(tmp_path, "../../etc").name.startswith("etc-")


def test_tabular_reconstructions_are_a_labelled_grid(tmp_path: Path) -> None:
    from PIL import Image

    from aecli.reporting import plot_reconstruction_grid

    x = np.random.default_rng(0).random((50, 140)).astype(np.float32)
    errors = np.arange(50, dtype=float)
    plot_reconstruction_grid(x, x * 0.9, errors, False, tmp_path / "grid.png")
    width, height = Image.open(tmp_path / "grid.png").size
    assert height > width / 2  # three groups of three panels, not a one-row strip


def test_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    """Click's usage errors (unknown option, missing argument, a value out of range) as every other error."""
    for args in (["evaluate", "--bogus"], ["evaluate"], ["reconstruct", str(tmp_path), "--seed=-1"]):
        done = subprocess.run([sys.executable, "-m", "aecli", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    helped = subprocess.run([sys.executable, "-m", "aecli", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "train" in helped.stdout


def test_integer_labels_beyond_int64_are_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("a,label\n" + "".join(f"{i},{'1e20' if i % 2 else 7}\n" for i in range(10)))
    raw = read_source(str(path), label_column="label")
    assert raw.label_names == ["1e20", "7"] and raw.y_train.tolist()[:2] == [1, 0]


def test_a_float_tiff_keeps_its_values(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "half.tif")
    pixels, _ = _read_image(tmp_path / "half.tif", (8, 8, 1))
    assert np.allclose(pixels, 0.5)


def test_the_same_file_cannot_be_both_the_normal_and_the_anomalous_data(cli, trained_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).random((20, 8, 8)) * 16)
    (tmp_path / "alias.npy").symlink_to(tmp_path / "rows.npy")
    before = sorted(trained_run.iterdir())
    result = cli("evaluate", trained_run, "--data", tmp_path / "rows.npy", "--anomaly-data", tmp_path / "alias.npy")
    assert result.exit_code == 2 and "--anomaly-data: the same source as --data" in result.stderr
    assert sorted(trained_run.iterdir()) == before  # nothing written
