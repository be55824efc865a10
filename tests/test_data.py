from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from aecli.config import DataConfig
from aecli.data import fit_scaling, load_dataset, peek_sample_shape, read_source
from aecli.data.files import read_idx
from aecli.errors import DataError


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    codes = {np.dtype("uint8"): 0x08, np.dtype(">f4"): 0x0D, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def images(n: int = 30, size: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 3, n).astype(np.uint8)


def test_digits_is_the_offline_default() -> None:
    dataset = load_dataset(DataConfig(), seed=0)
    assert dataset.sample_shape == (8, 8, 1) and dataset.is_image
    total = len(dataset.x_train) + len(dataset.x_test) + len(dataset.x_val)
    assert total == 1797
    assert len(dataset.x_test) == round(0.2 * 1797)
    assert dataset.x_train.dtype == np.float32
    assert dataset.x_train.min() >= 0 and dataset.x_train.max() == pytest.approx(1.0)
    assert dataset.scaling.kind == "global" and float(dataset.scaling.scale) == 16.0


def test_splits_are_seeded_and_disjoint() -> None:
    a = load_dataset(DataConfig(limit=200), seed=3)
    b = load_dataset(DataConfig(limit=200), seed=3)
    c = load_dataset(DataConfig(limit=200), seed=4)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    rows = {row.tobytes() for row in a.x_train} & {row.tobytes() for row in a.x_test}
    assert len(rows) <= 2  # digits has a few duplicate images, but the split itself is disjoint


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_with_labels_found_beside_it(tmp_path: Path, suffix: str) -> None:
    x, y = images()
    source = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y)
    dataset = load_dataset(DataConfig(source=str(source), validation_split=0.2), seed=0)
    assert dataset.sample_shape == (6, 6, 1)
    assert dataset.scaling.kind == "uint8"
    assert dataset.y_train is not None and len(dataset.y_train) == len(dataset.x_train)
    assert len(dataset.x_train) + len(dataset.x_val) + len(dataset.x_test) == 30


def test_idx_folder_uses_its_train_and_test_files(tmp_path: Path) -> None:
    for prefix, n in (("train", 20), ("t10k", 10)):
        x, y = images(n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", y)
    dataset = load_dataset(DataConfig(source=str(tmp_path), validation_split=0.1), seed=0)
    assert len(dataset.x_test) == 10 and len(dataset.x_train) + len(dataset.x_val) == 20
    assert dataset.description["source_has_test_split"]


def test_idx_labels_path_overrides_the_sibling(tmp_path: Path) -> None:
    x, y = images()
    source = write_idx(tmp_path / "pics.idx", x)
    labels = write_idx(tmp_path / "tags.idx", y)
    raw = read_source(str(source), labels_path=labels)
    assert raw.y_train is not None and np.array_equal(raw.y_train, y)


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 100)
    with pytest.raises(DataError, match="not an IDX file .bad magic number 0x12345678"):
        read_idx(path)


def test_idx_truncated_payload_is_caught_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 1_000_000_000, 28, 28) + b"\x00" * 50)
    with pytest.raises(DataError, match=r"its header promises shape \(1000000000, 28, 28\)"):
        read_idx(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    x, _ = images()
    good = write_idx(tmp_path / "good-images-idx3-ubyte.gz", x)
    bad = tmp_path / "bad-images-idx3-ubyte.gz"
    bad.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(DataError, match="cannot read it as gzip"):
        read_idx(bad)


def test_images_and_labels_of_different_lengths(tmp_path: Path) -> None:
    x, y = images()
    source = write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y[:-5])
    with pytest.raises(DataError, match="30 train samples but labels of shape .25,.; images and labels must"):
        read_source(str(source))


def test_npz_in_keras_layout(tmp_path: Path) -> None:
    x, y = images(40)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    dataset = load_dataset(DataConfig(source=str(path), validation_split=0.1), seed=0)
    assert len(dataset.x_test) == 10 and dataset.y_test is not None


def test_npz_with_x_and_y(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.random.default_rng(0).random((50, 5)), y=np.arange(50) % 2)
    dataset = load_dataset(DataConfig(source=str(path)), seed=0)
    assert dataset.sample_shape == (5,) and not dataset.is_image
    assert dataset.scaling.kind == "minmax" and dataset.scaling.offset.shape == (5,)


def test_npz_with_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, features=np.zeros((4, 2)))
    with pytest.raises(DataError, match="expected arrays x_train/y_train/x_test/y_test or x/y, found features"):
        read_source(str(path))


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="holds Python objects, which are refused"):
        read_source(str(path))


def test_npy_with_npy_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(20) % 4)
    raw = read_source(str(tmp_path / "x.npy"), labels_path=tmp_path / "y.npy")
    assert raw.x_train.shape == (20, 4, 4) and raw.y_train is not None


def test_csv_with_header_and_named_label_column(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    rows = ["a,b,kind,c"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'},{i % 3}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    dataset = load_dataset(DataConfig(source=str(path), label_column="kind"), seed=0)
    assert dataset.sample_shape == (3,)
    assert dataset.label_names == ["cat", "dog"]
    assert dataset.x_train.min() >= 0 and dataset.x_train.max() <= 1


def test_csv_without_header_and_index_label_column(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("\n".join(f"{i},{i + 1},{i % 2}" for i in range(10)))
    raw = read_source(str(path), label_column=-1)
    assert raw.x_train.shape == (10, 2) and raw.y_train is not None and raw.y_train.tolist()[:2] == [0, 1]


def test_csv_non_numeric_cell_is_located(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(DataError, match=r"line 3, column 2 \(b\) is not a number: 'oops'"):
        read_source(str(path))


def test_csv_unknown_label_column(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="data.label_column: no column 'c'"):
        read_source(str(path), label_column="c")


def test_nan_rows_are_refused(tmp_path: Path) -> None:
    x = np.ones((10, 3))
    x[4, 1] = np.nan
    x[7, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"2 row\(s\) with NaN or inf \(first: row 5,"):
        read_source(str(tmp_path / "x.npy"))


def test_zero_rows_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match="train data is empty"):
        read_source(str(tmp_path / "x.npy"))


def test_non_numeric_array_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match="dtype <U1, expected numbers"):
        read_source(str(tmp_path / "x.npy"))


def test_missing_file_names_the_builtin_sources() -> None:
    with pytest.raises(DataError, match="no such file or folder: mnits .built-in sources: digits, mnist"):
        read_source("mnits")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unsupported file data.parquet"):
        read_source(str(path))


def test_classes_filter_training_rows_only() -> None:
    dataset = load_dataset(DataConfig(classes=[0, 1]), seed=0)
    assert dataset.y_train is not None and set(np.unique(dataset.y_train)) == {0, 1}
    assert dataset.y_val is not None and set(np.unique(dataset.y_val)) <= {0, 1}
    assert dataset.y_test is not None and len(np.unique(dataset.y_test)) == 10  # anomalies stay in the test set


def test_classes_need_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((20, 3)))
    with pytest.raises(DataError, match="data.classes: the source has no labels"):
        load_dataset(DataConfig(source=str(tmp_path / "x.npy"), classes=[1]), seed=0)


def test_limit_caps_rows() -> None:
    dataset = load_dataset(DataConfig(limit=100, validation_split=0.1, test_split=0.2), seed=0)
    assert len(dataset.x_train) + len(dataset.x_val) + len(dataset.x_test) == 100


def test_minmax_scaling_is_fitted_on_training_rows_only() -> None:
    train = np.array([[0.0, 10.0], [2.0, 30.0]])
    scaling = fit_scaling(train, "minmax", is_image=False)
    np.testing.assert_allclose(scaling.apply(np.array([[1.0, 20.0], [4.0, 50.0]])), [[0.5, 0.5], [2.0, 2.0]])


def test_constant_features_do_not_divide_by_zero() -> None:
    scaling = fit_scaling(np.array([[5.0, 1.0], [5.0, 2.0]]), "minmax", is_image=False)
    assert np.all(np.isfinite(scaling.apply(np.array([[5.0, 1.5]]))))


def test_peek_sample_shape_reads_no_heavy_library(tmp_path: Path) -> None:
    x, _ = images()
    source = write_idx(tmp_path / "a-images-idx3-ubyte.gz", x)
    assert peek_sample_shape(DataConfig(source=str(source))) == (6, 6, 1)
    assert peek_sample_shape(DataConfig(source="mnist")) == (28, 28, 1)


def test_offline_download_says_how_to_use_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline() -> None:
        raise Exception("URL fetch failure on https://example/mnist.npz: None -- [Errno -3] name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match=r"could not download it .*--set data.source=path/to/train-images-idx3-ubyte"):
        read_source("mnist")


def test_a_column_named_twice_in_the_header_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("a,label,b,label\n1,0,2,1\n3,1,4,0\n5,0,6,1\n")
    with pytest.raises(DataError, match=r"names 'label' 2 times \(columns 2, 4\); rename them"):
        read_source(str(path), label_column="label")
    assert read_source(str(path), label_column=3).y_train.tolist() == [1, 0, 1]  # by index it is unambiguous
