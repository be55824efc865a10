"""The bad-input corpus: each case is a one-line `error: ...`, exit code 2, no traceback, and no run
left behind that claims success."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def alias_bomb(levels: int) -> str:
    """The "billion laughs" document: each level lists the previous one nine times."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def csv_case(text: str, extra: str = "") -> Case:
    return data_file("d.csv", raw(text.encode()), extra)


def _zip(path: Path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy_header(descr: str, shape: str) -> bytes:
    """A version 1.0 .npy header with any text in it, and no data after it."""
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}}}"
    text += " " * (-(len(text) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def special_file(kind: str) -> Case:
    """A config or data source that is not a regular file: a FIFO (reading it would block) or
    a link to an endless character device."""

    def make(folder: Path) -> list[str]:
        target = folder / ("c.yaml" if kind.startswith("config") else "d.npy")
        if kind.endswith("fifo"):
            os.mkfifo(target)
        else:
            target.symlink_to("/dev/zero")
        if kind.startswith("config"):
            return ["train", str(target)]
        (folder / "c.yaml").write_text(f"data: {{source: {target}}}\n")
        return ["train", str(folder / "c.yaml")]

    return make


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
    "yaml alias bomb": config(alias_bomb(9)),
    "yaml alias cycle": config("a: &a [*a]\n"),
    "yaml nested too deeply": config("a: " + "[" * 20000 + "]" * 20000 + "\n"),
    "config over a megabyte": config("# padding\n" * 120_000 + "{}\n"),
    "duplicate section": config("training: {epochs: 1}\nmodel: {}\ntraining: {epochs: 2}\n"),
    "duplicate key in a section": config("optimizer:\n  name: sgd\n  name: adam\n"),
    "boolean as epochs": config("training: {epochs: true}\n"),
    "sexagesimal epochs": config("training: {epochs: 10:00}\n"),
    "hexadecimal epochs": config("training: {epochs: 0x10}\n"),
    "infinite learning rate": config("optimizer: {learning_rate: .inf}\n"),
    "nan dropout": config("model: {dropout: .nan}\n"),
    "boolean as latent size": config("model: {latent_dim: false}\n"),
    "thousand-character unknown key": config("model: {" + "k" * 1000 + ": 1}\n"),
    "thousands of unknown keys": config("data: {" + ", ".join(f"k{i}: 1" for i in range(5000)) + "}\n"),
    "yaml !!bool on a name": config("loss: {name: !!bool mse}\n"),
    "yaml !!timestamp on a name": config("loss: {name: !!timestamp mse}\n"),
    "yaml !!set as a section": config("model: !!set [a, 1]\n"),
    "learning rate beyond float32": config("optimizer: {learning_rate: 1e39}\n"),
    "seed beyond 32 bits": config("training: {seed: 19437725154}\n"),
    "boolean as a class": config("data: {classes: [true]}\n"),
    "config is a fifo": special_file("config-fifo"),
    "config links to /dev/zero": special_file("config-device"),
    "empty --set value": lambda folder: [*config("{}\n")(folder), "--set", "model.encoder="],
    "--set infinite learning rate": lambda folder: [*config("{}\n")(folder), "--set", "optimizer.learning_rate=.inf"],
    "--set boolean epochs": lambda folder: [*config("{}\n")(folder), "--set", "training.epochs=true"],
    "--set alias bomb": lambda folder: [
        *config("{}\n")(folder),
        "--set",
        "data.x=" + alias_bomb(9).replace("\n", ", "),
    ],
    # data files
    "data source is a fifo": special_file("data-fifo"),
    "data source links to /dev/zero": special_file("data-device"),
    "csv value beyond float32": csv_case("a,b\n1,2\n3,1e39\n" + "1,2\n" * 20),
    "csv span beyond float32": csv_case("a,b\n1,3e38\n3,-3e38\n" + "1,2\n" * 20),
    "csv value near float64 max": csv_case("a,b\n1,1e308\n3,-1e308\n" + "1,2\n" * 20),
    "npy float64 beyond float32": data_file("f.npy", npy(np.r_[np.ones((20, 3)), [[1e300, 0, 0]]])),
    "csv blank label": csv_case("a,b,label\n1,2,0\n3,4,\n" + "1,2,1\n" * 20, ", label_column: label"),
    "csv class name absent": csv_case("a,label\n" + "1,cat\n2,dog\n" * 10, ", label_column: label, classes: [cow]"),
    "csv class name on integer labels": csv_case(
        "a,label\n" + "1,0\n2,1\n" * 10, ", label_column: label, classes: [cat]"
    ),
    "csv unknown id column": csv_case("a,b\n1,2\n3,4\n", ", id_column: key"),
    "csv id column is the label column": csv_case("a,b\n1,2\n3,4\n", ", id_column: b, label_column: b"),
    "id column on an npy source": data_file("i.npy", npy(np.ones((20, 3))), ", id_column: 0"),
    "csv only label and id columns": csv_case("id,label\na,1\nb,2\n", ", id_column: id, label_column: label"),
    "csv with a NUL byte": data_file("z.csv", raw(b"a,b\n1,2\n3,\x004\n")),
    "csv with a 200 KB field": csv_case("a,b\n1,2\n3," + "9" * 200_000 + "\n"),
    "npz holding pickled objects": data_file(
        "p.npz", lambda path: np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object))
    ),
    "npz member that is not an array": data_file("m.npz", lambda path: _zip(path, {"x.npy": b"hello"})),
    "npz member that is not .npy": data_file("t.npz", lambda path: _zip(path, {"notes.txt": b"hello"})),
    "npy header promising 2^31 rows": data_file("h.npy", raw(_npy_header("'<f8'", "(2147483648,)"))),
    "npy header of zero-size items": data_file("v.npy", raw(_npy_header("'V0'", "(-1,)"))),
    "npy header that is not a dict": data_file("b.npy", raw(_npy_header("'<f8'", "(2, 2), }("))),
    "csv header shorter than its rows": csv_case("a,b\n1,2,x\n3,4,5\n"),
    "idx with 255 dimensions": data_file("w-images-idx3-ubyte", raw(bytes([0, 0, 8, 255]) + b"\xff" * 1020)),
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
    assert len(CORPUS) + len(RUN_CORPUS) >= 80


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
    assert_one_line_error(result)
    for record in runs.glob("*/run.json") if runs.exists() else []:
        assert json.loads(record.read_text())["status"] != "completed"


def assert_one_line_error(result: Any) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[:2000]
    assert len(lines[0]) <= 1100, f"an error line of {len(lines[0])} characters"
    assert "Traceback" not in result.output


RunCase = Callable[[Path, Path], list[str]]


def damaged(change: Callable[[Path], None], *args: str, command: str = "evaluate") -> RunCase:
    """A copy of a trained run, damaged by `change`, given to `command`."""

    def make(folder: Path, trained: Path) -> list[str]:
        copy = Path(shutil.copytree(trained, folder / "run", ignore=shutil.ignore_patterns("eval-*", "reconstruct-*")))
        change(copy)
        return [command, str(copy), *args]

    return make


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])

    return change


def flip_byte(name: str, at: float = 0.3) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        data = bytearray((run / name).read_bytes())
        data[int(len(data) * at)] ^= 0xFF
        (run / name).write_bytes(bytes(data))

    return change


def remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def garble(name: str, content: bytes = b"\x00\xffgarbage") -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(content)


def with_file(name: str, write: Callable[[Path], None], *args: str, command: str = "evaluate") -> RunCase:
    """An intact run given a hostile extra file (written beside it) through `args`."""

    def make(folder: Path, trained: Path) -> list[str]:
        write(folder / name)
        return [command, str(trained), *[arg.replace("{file}", str(folder / name)) for arg in args]]

    return make


def nothing(run: Path) -> None:
    return None


def resumed(change: Callable[[Path], None]) -> RunCase:
    """`train --resume` of an interrupted copy of the trained run, damaged by `change`."""

    def make(folder: Path, trained: Path) -> list[str]:
        copy = Path(shutil.copytree(trained, folder / "run", ignore=shutil.ignore_patterns("eval-*", "reconstruct-*")))
        _edit_json(copy / "run.json", lambda info: info.update(status="interrupted"))
        change(copy)
        return ["train", str(copy), "--resume", str(copy)]

    return make


def _state(run: Path, **changes: Any) -> None:
    _edit_json(run / "checkpoints" / "state.json", lambda state: state.update(changes))


def _data_is_text(info: dict[str, Any]) -> None:
    info["data"] = "x"


def _edit_json(path: Path, change: Callable[[Any], None]) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _other_source(run: Path) -> None:
    np.save(run.parent / "five.npy", np.random.default_rng(0).random((40, 5)))
    text = (run / "config.yaml").read_text().replace("source: digits", f"source: {run.parent / 'five.npy'}")
    (run / "config.yaml").write_text(text)


RUN_CORPUS: dict[str, RunCase] = {
    "history.csv deleted": damaged(remove("history.csv")),
    "history.csv garbled": damaged(garble("history.csv", b"epoch,loss\n1,abc\n")),
    "history.csv empty": damaged(garble("history.csv", b"")),
    "model.keras truncated": damaged(truncate("model.keras")),
    "model.keras byte flipped": damaged(flip_byte("model.keras")),
    "encoder.keras truncated": damaged(truncate("encoder.keras")),
    "model.keras truncated, reconstruct": damaged(truncate("model.keras"), "--indices", "0", command="reconstruct"),
    "metrics.json garbled": damaged(garble("metrics.json")),
    "config.yaml garbled": damaged(garble("config.yaml", b"model: [unclosed\n")),
    "config.yaml alias bomb": damaged(garble("config.yaml", alias_bomb(9).encode())),
    "train_errors.csv garbled": damaged(garble("train_errors.csv", b"index,mse\n0,zzz\n"), "--normal-classes", "0"),
    "--out is a file": damaged(lambda run: (run / "taken").write_text("x"), "--out", "{run}/taken"),
    "--out is a non-empty folder": damaged(lambda run: None, "--out", "{run}/checkpoints"),
    "--normal-classes name on integer labels": damaged(nothing, "--normal-classes", "cat"),
    "--normal-classes absent": damaged(nothing, "--normal-classes", "42"),
    "--set without --data": damaged(nothing, "--set", "data.limit=5"),
    "--set outside data": with_file(
        "x.npy", npy(np.zeros((4, 8, 8))), "--data", "{file}", "--set", "model.latent_dim=3"
    ),
    "--set empty value": with_file("x.npy", npy(np.zeros((4, 8, 8))), "--data", "{file}", "--set", "data.limit="),
    "--data of another layout (4x16 for 8x8)": with_file("x.npy", npy(np.zeros((4, 4, 16))), "--data", "{file}"),
    "--data of another size": with_file("x.npy", npy(np.zeros((4, 9, 9))), "--data", "{file}"),
    "--anomaly-data with NaN": with_file("x.npy", npy(np.full((4, 8, 8), np.nan)), "--anomaly-data", "{file}"),
    "reconstruct input of another layout": with_file(
        "x.npy", npy(np.zeros((4, 16, 4))), "{file}", command="reconstruct"
    ),
    "reconstruct garbage png": with_file("g.png", raw(b"\x89PNG\r\n\x1a\n garbage"), "{file}", command="reconstruct"),
    "reconstruct truncated png": with_file(
        "t.png", lambda path: _png(path, truncate_to=45), "{file}", command="reconstruct"
    ),
    "reconstruct --set unknown label column": with_file(
        "x.csv", raw(b"a,b\n1,2\n"), "{file}", "--set", "data.label_column=nope", command="reconstruct"
    ),
    "reconstruct --indices out of range": damaged(nothing, "--indices", "100000", command="reconstruct"),
    "run.json nested 100,000 deep": damaged(garble("run.json", b"[" * 100_000 + b"]" * 100_000)),
    "metrics.json without train_errors": damaged(garble("metrics.json", b"{}")),
    "run.json scaling of another size": damaged(
        lambda run: _edit_json(run / "run.json", lambda info: info["data"]["scaling"].update(offset=[0.0] * 7))
    ),
    "run.json zero scale": damaged(
        lambda run: _edit_json(run / "run.json", lambda info: info["data"]["scaling"].update(scale=0.0))
    ),
    "config.yaml now names data of another shape": damaged(_other_source, "--indices", "0", command="reconstruct"),
    "run.json fingerprints of the wrong type": damaged(
        lambda run: _edit_json(run / "run.json", lambda info: info["data"].update(fingerprints="x"))
    ),
    "--out name too long": damaged(nothing, "--out", "{run}/" + "e" * 300),
    "resume: state.json history of the wrong type": resumed(lambda run: _state(run, history="abc")),
    "resume: state.json best of the wrong type": resumed(lambda run: _state(run, best="low")),
    "resume: state.json epoch beyond the configured ones": resumed(lambda run: _state(run, epoch=50)),
    "resume: state.json negative epoch": resumed(lambda run: _state(run, epoch=-3)),
    "resume: run.json data of the wrong type": resumed(lambda run: _edit_json(run / "run.json", _data_is_text)),
    "resume: config.yaml edited since": resumed(
        lambda run: (run / "config.yaml").write_text(
            (run / "config.yaml").read_text().replace("kind: dense", "kind: vae")
        )
    ),
}


def _png(path: Path, truncate_to: int | None = None) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    if truncate_to is not None:
        path.write_bytes(path.read_bytes()[:truncate_to])


@pytest.mark.parametrize("case", list(RUN_CORPUS), ids=list(RUN_CORPUS))
def test_bad_input_to_a_trained_run(case: str, cli, trained_run: Path, tmp_path: Path) -> None:
    """Damaged runs and hostile options: one line, exit 2, nothing written, the run untouched."""
    before = {path: path.stat().st_mtime_ns for path in trained_run.rglob("*") if path.is_file()}
    args = [arg.replace("{run}", str(tmp_path / "run")) for arg in RUN_CORPUS[case](tmp_path, trained_run)]
    run = Path(args[1])
    if args[2:3] == ["--resume"]:  # `train --resume RUN`: the run itself must be left as it was
        args = ["train", "--resume", args[1]]
        before = {**before, **{path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()}}
    existing = set(run.iterdir())
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert_one_line_error(result)
    assert set(run.iterdir()) == existing, "an output folder was left behind"
    assert not list(tmp_path.glob(".*partial*")) and not list(run.glob(".*partial*"))
    after = {path: path.stat().st_mtime_ns for path in [*trained_run.rglob("*"), *run.rglob("*")] if path.is_file()}
    kept = {p: t for p, t in after.items() if p in before and p.name != ".lock"}  # the lock records its holder
    assert kept == {p: t for p, t in before.items() if p.name != ".lock"}, "a run was modified"
