"""Shard folders: `aecli prepare`, the hashed splits, streaming pipelines and training on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aecli.commands.prepare import prepare_shards
from aecli.config import DataConfig
from aecli.data import fit_scaling, load_dataset, peek_sample_shape
from aecli.data.shards import hash_position, open_sharded, read_shards_into_memory
from aecli.errors import ConfigError, DataError, RunError


def numbered_rows(folder: Path, rows: int = 1000, features: int = 6, dtype: str = "float32") -> Path:
    """Rows whose first feature is their index, so every streamed row can be identified."""
    x = np.random.default_rng(0).uniform(-3, 5, size=(rows, features)).astype(dtype)
    x[:, 0] = np.arange(rows)
    path = folder / "rows.npy"
    np.save(path, x)
    np.save(folder / "labels.npy", np.arange(rows) % 4)
    return path


def prepared(folder: Path, encoding: str, shard_size: int = 300, rows: int = 1000) -> Path:
    folder.mkdir(exist_ok=True)
    source = numbered_rows(folder, rows)
    cfg = DataConfig(source=str(source), labels_path=folder / "labels.npy")
    return prepare_shards(cfg, folder / f"shards-{encoding}", shard_size, encoding, say=lambda _: None).out_dir


@pytest.mark.parametrize("encoding", ["npy", "tfrecord"])
def test_prepare_writes_shards_and_a_manifest(encoding: str, tmp_path: Path) -> None:
    out = prepared(tmp_path, encoding)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoding"] == encoding and manifest["row_shape"] == [6]
    shards = manifest["splits"]["train"]["shards"]
    assert [s["rows"] for s in shards] == [300, 300, 300, 100]
    assert all((out / s["file"]).is_file() for s in shards)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_prepare_never_writes_into_an_existing_folder_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = prepared(tmp_path, "npy")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunError, match="already exists"):
        prepare_shards(DataConfig(source="digits"), out, 100, "npy", say=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(DataError):
        prepare_shards(DataConfig(source=str(tmp_path / "missing.npy")), tmp_path / "new", 100, "npy")
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_both_encodings_hold_the_same_rows_in_the_same_splits(tmp_path: Path) -> None:
    tf_data = load_dataset(DataConfig(source=str(prepared(tmp_path, "tfrecord"))), seed=3)
    npy_data = load_dataset(DataConfig(source=str(prepared(tmp_path, "npy"))), seed=3)
    for part in ("x_train", "x_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(tf_data, part), getattr(npy_data, part))


def test_hashed_splits_are_disjoint_cover_every_row_and_follow_the_fractions(tmp_path: Path) -> None:
    cfg = DataConfig(source=str(prepared(tmp_path, "npy")), test_split=0.2, validation_split=0.25)
    data = open_sharded(cfg, seed=1)
    seen = {
        part: np.concatenate([rows[:, 0] for rows, _ in data.blocks(part)]).astype(int)
        for part in ("train", "validation", "test")
    }
    everything = np.concatenate(list(seen.values()))
    assert sorted(everything) == list(range(1000))  # disjoint, and nothing left out
    assert {part: len(rows) for part, rows in seen.items()} == data.counts
    assert abs(len(seen["test"]) - 200) <= 10 and abs(len(seen["validation"]) - 200) <= 10
    other_seed = open_sharded(cfg, seed=2)
    assert set(np.concatenate([r[:, 0] for r, _ in other_seed.blocks("test")])) != set(seen["test"])
    np.testing.assert_array_equal(hash_position(np.arange(5), 1), hash_position(np.arange(5), 1))


def test_classes_and_limit_apply_to_streamed_parts(tmp_path: Path) -> None:
    cfg = DataConfig(source=str(prepared(tmp_path, "npy")), classes=[1, 2], limit=500)
    data = open_sharded(cfg, seed=0)
    train = np.concatenate([labels for _, labels in data.blocks("train")])
    indices = np.concatenate([rows[:, 0] for rows, _ in data.blocks("train")])
    assert set(train) == {1, 2} and indices.max() < 500
    assert set(np.concatenate([labels for _, labels in data.blocks("test")])) == {0, 1, 2, 3}  # test is unfiltered


def test_streaming_scaling_equals_the_in_memory_fit(tmp_path: Path) -> None:
    data = open_sharded(DataConfig(source=str(prepared(tmp_path, "npy")), scaling="minmax"), seed=0)
    train = np.concatenate([rows for rows, _ in data.blocks("train")])
    expected = fit_scaling(train, "minmax", is_image=False)
    np.testing.assert_allclose(data.scaling.offset, expected.offset)
    np.testing.assert_allclose(data.scaling.scale, expected.scale)


def test_an_epoch_streams_every_training_row_once_in_a_new_order(tmp_path: Path) -> None:
    data = open_sharded(DataConfig(source=str(prepared(tmp_path, "npy")), scaling="none"), seed=0)
    from aecli.feeds import Stream

    pipeline = Stream(data, "train").dataset(batch_size=64, shuffle=True, seed=0)
    epochs = [np.concatenate([inputs.numpy()[:, 0] for inputs, _ in pipeline]) for _ in range(2)]
    expected = sorted(np.concatenate([rows[:, 0] for rows, _ in data.blocks("train")]))
    for order in epochs:
        assert sorted(order) == expected
    assert not np.array_equal(epochs[0], epochs[1])
    assert len(list(pipeline)) == int(pipeline.cardinality()) == -(-data.counts["train"] // 64)


def test_a_plain_folder_of_npy_files_is_a_shard_source(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number in range(3):
        np.save(folder / f"part{number}.npy", rng.integers(0, 256, size=(200, 5, 5), dtype=np.uint8))
        np.save(folder / f"part{number}.labels.npy", np.full(200, number))
    cfg = DataConfig(source=str(folder))
    assert peek_sample_shape(cfg) == (5, 5, 1)
    data = open_sharded(cfg, seed=0)
    assert data.scaling.kind == "uint8" and sum(data.counts.values()) == 600 and data.labelled


def write_npy_with_header_lie(path: Path) -> None:
    np.save(path, np.zeros((100, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-40])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: write_npy_with_header_lie(f / "a.npy"), "truncated"),
        (lambda f: np.save(f / "b.npy", np.zeros((5, 3), np.float32)), "rows of shape"),
        (lambda f: np.save(f / "a.labels.npy", np.arange(7)), "expected 10 integer labels"),
        (lambda f: (f / "manifest.json").write_text("{not json"), "not an aecli shard manifest"),
        (lambda f: np.save(f / "a.npy", np.full((10, 4), np.nan, np.float32)), "NaN or inf"),
    ],
)
def test_broken_shard_folders_are_one_line_data_errors(damage, message: str, tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((10, 4), np.float32))
    damage(folder)
    with pytest.raises(DataError, match=message):
        open_sharded(DataConfig(source=str(folder)), seed=0)


def test_a_missing_tfrecord_shard_is_named(tmp_path: Path) -> None:
    out = prepared(tmp_path, "tfrecord")
    (out / "train-00001-of-00004.tfrecord").unlink()
    with pytest.raises(DataError, match="train-00001-of-00004.tfrecord listed in manifest.json is missing"):
        open_sharded(DataConfig(source=str(out)), seed=0)


@pytest.mark.parametrize("encoding", ["npy", "tfrecord"])
def test_train_streams_a_shard_folder_and_evaluate_sees_its_test_split(
    encoding: str, cli, tiny_config, tmp_path
) -> None:
    out = cli("prepare", "digits", tmp_path / "digits", "--shard-size", "500", "--format", encoding)
    assert out.exit_code == 0, out.output
    assert Path(out.stdout.strip().splitlines()[-1]) == tmp_path / "digits"
    config = tiny_config({"data": {"source": str(tmp_path / "digits")}, "training": {"noise": {"kind": "mask"}}})
    trained = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert trained.exit_code == 0, trained.output
    run = Path(trained.stdout.strip().splitlines()[-1])
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["streamed"] and info["data"]["encoding"] == encoding
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_samples"] == info["data"]["test"] and "per_class" in metrics
    assert len((run / "train_errors.csv").read_text().splitlines()) == info["data"]["train"] + 1
    evaluated = cli("evaluate", run)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((Path(evaluated.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert report["n_samples"] == metrics["n_samples"]
    assert report["reconstruction"]["mse"] == pytest.approx(metrics["reconstruction"]["mse"], rel=1e-4)


def test_full_batch_gd_is_refused_on_a_streamed_folder(cli, tiny_config, tmp_path: Path) -> None:
    source = prepared(tmp_path, "npy")
    result = cli("train", tiny_config({"data": {"source": str(source)}, "optimizer": {"name": "gd"}}))
    assert result.exit_code == 2 and "use sgd with a large training.batch_size" in result.stderr


def test_prepare_rejects_other_sections_and_bad_formats(cli, tmp_path: Path) -> None:
    result = cli("prepare", "digits", tmp_path / "out", "--set", "model.latent_dim=3")
    assert result.exit_code == 2 and "prepare takes data.labels_path" in result.stderr
    result = cli("prepare", "digits", tmp_path / "out", "--format", "parquet")
    assert result.exit_code == 2 and "expected one of tfrecord, npy" in result.stderr
    assert not (tmp_path / "out").exists()


def test_shard_labels_come_from_the_folder(tmp_path: Path) -> None:
    source = prepared(tmp_path, "npy")
    with pytest.raises((DataError, ConfigError), match="carries its own labels"):
        open_sharded(DataConfig(source=str(source), labels_path=tmp_path / "labels.npy"), seed=0)


def test_big_endian_sources_keep_their_values_in_tfrecord_shards(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(">f4")
    np.save(tmp_path / "big_endian.npy", x)
    out = prepare_shards(DataConfig(source=str(tmp_path / "big_endian.npy")), tmp_path / "s", 20, "tfrecord")
    raw = read_shards_into_memory(out.out_dir)
    np.testing.assert_array_equal(raw.x_train, x.astype("<f4"))
    assert json.loads((out.out_dir / "manifest.json").read_text())["dtype"] == "<f4"


def test_a_corrupt_tfrecord_shard_found_while_training_is_a_one_line_error(cli, tiny_config, tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(600, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    out = prepare_shards(DataConfig(source=str(tmp_path / "images.npy")), tmp_path / "s", 200, "tfrecord").out_dir
    shard = out / "train-00001-of-00003.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    result = cli("train", tiny_config({"data": {"source": str(out)}}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "train-00001-of-00003.tfrecord" in result.stderr
    assert "corrupted record" in result.stderr and "{{" not in result.stderr
    assert not list((tmp_path / "runs").iterdir())  # no epoch finished: the new run is not kept
    assert len(result.stderr.strip().splitlines()) == 1


def test_nan_in_any_split_and_empty_validation_are_refused(tmp_path: Path) -> None:
    source = prepared(tmp_path, "npy")
    data = open_sharded(DataConfig(source=str(source)), seed=0)
    test_row = int(next(iter(data.blocks("test")))[0][0, 0])  # first feature holds the row index
    shard = np.load(source / "train-00000-of-00004.npy")
    shard[test_row, 1] = np.nan
    np.save(source / "train-00000-of-00004.npy", shard)
    with pytest.raises(DataError, match="test rows hold NaN or inf"):
        open_sharded(DataConfig(source=str(source)), seed=0)
    with pytest.raises(DataError, match="the validation split is empty"):
        open_sharded(DataConfig(source=str(prepared(tmp_path / "b", "npy", rows=5)), validation_split=0.01), seed=0)


def test_reading_a_shard_folder_into_memory_honours_the_limit(tmp_path: Path) -> None:
    raw = read_shards_into_memory(prepared(tmp_path, "npy"), limit=450)
    assert raw.x_train.shape == (450, 6) and raw.y_train is not None and len(raw.y_train) == 450
    np.testing.assert_array_equal(raw.x_train[:, 0], np.arange(450))


def test_a_file_that_is_no_tfrecord_is_refused_before_a_run_starts(cli, tiny_config, tmp_path: Path) -> None:
    out = prepared(tmp_path, "tfrecord")
    (out / "train-00002-of-00004.tfrecord").write_bytes(np.random.default_rng(0).bytes(5000))
    result = cli("train", tiny_config({"data": {"source": str(out)}}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "train-00002-of-00004.tfrecord" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_per_feature_scaling_of_images_streamed_and_in_memory(cli, tiny_config, tmp_path: Path) -> None:
    out = cli("prepare", "digits", tmp_path / "digits", "--format", "npy")
    assert out.exit_code == 0, out.output
    for source in ("digits", str(tmp_path / "digits")):
        config = tiny_config({"data": {"source": source, "scaling": "minmax"}, "training": {"epochs": 1}})
        result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
        assert result.exit_code == 0, result.output


def test_runs_record_absolute_data_paths_and_prepare_takes_only_its_keys(
    cli, tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = prepared(tmp_path, "npy")
    monkeypatch.chdir(tmp_path)
    config = tiny_config({"data": {"source": source.name}, "training": {"epochs": 1}})
    trained = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert trained.exit_code == 0, trained.output
    run = Path(trained.stdout.strip().splitlines()[-1])
    assert f"source: {source}" in (run / "config.yaml").read_text()
    monkeypatch.chdir(run)
    assert cli("evaluate", run).exit_code == 0  # found from another folder
    refused = cli("prepare", "digits", tmp_path / "other", "--set", "data.source=mnist")
    assert refused.exit_code == 2 and "the source is SOURCE" in refused.stderr
