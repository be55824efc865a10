"""`aecli embed`: one code per input sample, in input order, into a new file."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def test_embed_writes_codes_with_labels_in_input_order(
    trained_run: Path, cli: Callable[..., Any], tmp_path: Path
) -> None:
    result = cli("embed", trained_run, "digits", "--set", "data.limit=50", "--out", tmp_path / "codes.csv")
    assert result.exit_code == 0, result.output
    with (tmp_path / "codes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert len(rows) == 50 and [row["label"] for row in rows] == [str(y) for y in digits.target[:50]]
    assert [row["source_row"] for row in rows[:3]] == ["0", "1", "2"] and list(rows[0])[-1] == "z7"
    result = cli("embed", trained_run, "digits", "--set", "data.limit=50", "--out", tmp_path / "codes.npy")
    codes = np.load(tmp_path / "codes.npy")
    assert result.exit_code == 0 and codes.shape == (50, 8)
    assert np.allclose(codes[0], [float(rows[0][f"z{i}"]) for i in range(8)], atol=1e-5)


def test_embed_refuses_to_replace_or_guess(trained_run: Path, cli: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "taken.csv").write_text("precious\n")
    result = cli("embed", trained_run, "digits", "--out", tmp_path / "taken.csv")
    assert result.exit_code == 2 and "already exists" in result.output
    assert (tmp_path / "taken.csv").read_text() == "precious\n"
    result = cli("embed", trained_run, "digits", "--out", tmp_path / "codes.txt")
    assert result.exit_code == 2 and "expected a .npy or .csv file name" in result.output
    result = cli("embed", trained_run, "digits", "--batch-size", "0", "--out", tmp_path / "c.csv")
    assert result.exit_code == 2 and "--batch-size 0" in result.output
    result = cli("embed", trained_run, tmp_path / "missing.npy", "--out", tmp_path / "c.csv")
    assert result.exit_code == 2 and "input: no such file" in result.output
    assert not (tmp_path / "c.csv").exists()
