"""The bad-input corpus: each case is a one-line `error: ...`, exit code 2, no traceback, and no run
left behind that claims success."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

Case = Callable[[Path], list[str]]


def config(text: str, name: str = "c.yaml") -> Case:
    def make(folder: Path) -> list[str]:
        (folder / name).write_text(text)
        return ["train", str(folder / name)]

    return make


def config_bytes(data: bytes) -> Case:
    def make(folder: Path) -> list[str]:
        (folder / "c.yaml").write_bytes(data)
        return ["train", str(folder / "c.yaml")]

    return make


def data_file(name: str, write: Callable[[Path], None], extra: str = "") -> Case:
    def make(folder: Path) -> list[str]:
        write(folder / name)
        (folder / "c.yaml").write_text(f"data: {{source: {folder / name}{extra}}}\ntraining: {{epochs: 1}}\n")
        return ["train", str(folder / "c.yaml")]

    return make


def npy(array: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.save(path, array)


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def idx_with_labels(n_images: int, n_labels: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(gzip.compress(idx_bytes(np.zeros((n_images, 4, 4), np.uint8))))
        labels = path.parent / path.name.replace("images-idx3", "labels-idx1")
        labels.write_bytes(gzip.compress(idx_bytes(np.zeros(n_labels, np.uint8))))

    return write


def run_dir(write: Callable[[Path], None], command: str = "evaluate") -> Case:
    def make(folder: Path) -> list[str]:
        run = folder / "run"
        run.mkdir()
        write(run)
        return [command, str(run)]

    return make


def with_nan(n: int = 20) -> np.ndarray:
    x = np.random.default_rng(0).random((n, 4))
    x[3, 2] = np.nan
    return x


CORPUS: dict[str, Case] = {
    # configs
    "empty config": config(""),
    "binary garbage config": config_bytes(b"\x00\xff\xfe\x81garbage\x00" * 20),
    "invalid yaml": config("model: [1, 2\n"),
    "yaml list": config("- data\n- model\n"),
    "yaml scalar": config("just a string\n"),
    "yaml python tag": config("data: !!python/object/apply:os.system ['true']\n"),
    "unknown section": config("modle: {latent_dim: 2}\n"),
    "unknown key": config("optimizer: {learnig_rate: 0.1}\n"),
    "wrong type": config("model: {latent_dim: big}\n"),
    "zero width": config("model: {encoder: [0]}\n"),
    "negative learning rate": config("optimizer: {learning_rate: -0.1}\n"),
    "absurd epochs": config("training: {epochs: 1000000000}\n"),
    "bce on unbounded outputs": config("loss: bce\ndata: {scaling: none}\n"),
    "knob of another optimizer": config("optimizer: {name: sgd, beta_1: 0.9}\n"),
    "billion-unit layer": config("model: {encoder: [1000000000]}\n"),
    "validation split above 1": config("data: {validation_split: 1.5}\n"),
    "splits leave no rows": config("data: {validation_split: 0.5, test_split: 0.5}\n"),
    "conv on tabular data": data_file("t.npy", npy(np.random.default_rng(0).random((30, 5))), "}\nmodel: {kind: conv"),
    "conv cannot be mirrored": config("model: {kind: conv, filters: [4, 4, 4, 4]}\n"),
    "sparsity target above 1": config("model: {regularization: {sparsity: {target: 2}}}\n"),
    "noise fraction above 1": config("training: {noise: {kind: mask, amount: 5}}\n"),
    "section is a scalar": config("training: fast\n"),
    "missing config": lambda folder: ["train", str(folder / "nope.yaml")],
    "config is a folder": lambda folder: ["train", str(folder)],
    "malformed --set": lambda folder: [*config("{}\n")(folder), "--set", "epochs"],
    "--set into a scalar": lambda folder: [*config("{}\n")(folder), "--set", "data.source.x=1"],
    # data files
    "missing data file": data_file("absent.npy", lambda path: None),
    "empty npy file": data_file("e.npy", raw(b"")),
    "garbage npy": data_file("g.npy", raw(b"\x93NUMPY garbage" * 10)),
    "zero-row npy": data_file("z.npy", npy(np.zeros((0, 4)))),
    "one-dimensional npy": data_file("d.npy", npy(np.arange(10.0))),
    "string npy": data_file("s.npy", npy(np.array([["a", "b"]] * 5))),
    "pickled object npy": data_file("o.npy", lambda path: np.save(path, np.array([{"a": 1}] * 4, dtype=object))),
    "nan row": data_file("n.npy", npy(with_nan())),
    "inf values": data_file("i.npy", npy(np.full((10, 3), np.inf))),
    "complex dtype": data_file("c.npy", npy(np.ones((10, 3), np.complex64))),
    "npz with other keys": data_file("k.npz", lambda path: np.savez(path, features=np.zeros((4, 2)))),
    "garbage npz": data_file("b.npz", raw(b"PK\x03\x04 broken zip" * 5)),
    "truncated gzip idx": data_file(
        "t-images-idx3-ubyte.gz", raw(gzip.compress(idx_bytes(np.zeros((10, 4, 4), np.uint8)))[:-12])
    ),
    "bad idx magic": data_file("m-images-idx3-ubyte", raw(b"\x01\x02\x03\x04" + b"\x00" * 64)),
    "truncated idx payload": data_file("p-images-idx3-ubyte", raw(idx_bytes(np.zeros((10, 4, 4), np.uint8))[:-7])),
    "absurd idx dimensions": data_file(
        "a-images-idx3-ubyte", raw(bytes([0, 0, 8, 3]) + struct.pack(">3I", 10**9, 1000, 1000) + b"\x00" * 32)
    ),
    "labels of another length": data_file("x-images-idx3-ubyte.gz", idx_with_labels(12, 9)),
    "empty csv": data_file("e.csv", raw(b"")),
    "csv header only": data_file("h.csv", raw(b"a,b,c\n")),
    "csv non-numeric cell": data_file("n.csv", raw(b"a,b\n1,2\n3,x\n")),
    "ragged csv": data_file("r.csv", raw(b"1,2,3\n4,5\n")),
    "csv unknown label column": data_file("l.csv", raw(b"a,b\n1,2\n3,4\n"), ", label_column: kind"),
    "too few rows to split": data_file("f.npy", npy(np.ones((2, 3)))),
    "unsupported extension": data_file("d.parquet", raw(b"PAR1")),
    "classes absent from labels": data_file(
        "y.npz",
        lambda path: np.savez(path, x=np.random.default_rng(0).random((20, 3)), y=np.zeros(20, int)),
        ", classes: [7]",
    ),
    # run directories
    "evaluate a plain folder": run_dir(lambda run: None),
    "garbage run.json": run_dir(lambda run: (run / "run.json").write_bytes(b"\x00\x01not json")),
    "failed run": run_dir(lambda run: (run / "run.json").write_text(json.dumps({"status": "failed"}))),
    "completed run without models": run_dir(lambda run: (run / "run.json").write_text('{"status": "completed"}')),
    "reconstruct a plain folder": run_dir(lambda run: None, "reconstruct"),
    "resume a plain folder": lambda folder: ["train", "--resume", str(folder)],
}


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("case", list(CORPUS), ids=list(CORPUS))
def test_bad_input(case: str, cli, tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    args = CORPUS[case](folder)
    runs = tmp_path / "runs"
    if args[0] == "train":
        args = [*args, "--runs-dir", str(runs)]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for record in runs.glob("*/run.json") if runs.exists() else []:
        assert json.loads(record.read_text())["status"] != "completed"
