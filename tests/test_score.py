"""`aecli score`: new data scored in chunks, from files or stdin, matching evaluate's errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from aecli.cli import app
from aecli.commands.score import ScoreRequest, score_input
from tests.conftest import write_config


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained on a CSV with an id and a label column, and that CSV."""
    folder = tmp_path_factory.mktemp("csv_run")
    digits = load_digits()
    table = folder / "digits.csv"
    with table.open("w") as handle:
        handle.write("id," + ",".join(f"p{i}" for i in range(64)) + ",label\n")
        for i, (row, label) in enumerate(zip(digits.data[:600], digits.target[:600], strict=True)):
            handle.write(f"r{i}," + ",".join(str(int(v)) for v in row) + f",{label}\n")
    data = {"source": str(table), "label_column": "label", "id_column": "id", "limit": None}
    config = write_config(folder, {"data": data, "training": {"epochs": 2}})
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(folder / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1]), table


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_scores_match_evaluates_per_sample_errors_exactly(cli, csv_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, table = csv_run
    out = tmp_path / "scores.csv"
    result = cli("score", run, table, "--out", out)
    assert result.exit_code == 0, result.output
    scored = rows_of(out.read_text())
    evaluated = cli("evaluate", run, "--data", table)
    assert evaluated.exit_code == 0, evaluated.output
    out_dir = Path(evaluated.stdout.strip().splitlines()[-1])
    errors = rows_of((out_dir / "errors.csv").read_text())
    assert (out_dir / "residuals.png").stat().st_size > 0  # per-feature bars of the worst rows
    assert "Why the highest-scoring samples score high" in (out_dir / "report.html").read_text()
    assert [row["mse"] for row in scored] == [row["mse"] for row in errors]  # the same rows, the same numbers
    assert [row["id"] for row in scored[:2]] == ["r0", "r1"] and scored[0]["label"] == "0"
    threshold = json.loads((run / "thresholds.json").read_text())["active"]["value"]
    assert [row["flagged"] == "1" for row in scored] == [float(row["mse"]) > threshold for row in scored]
    top = scored[0]["top_features"].split(";")
    assert len(top) == 3 and all(item.split("=")[0].startswith("p") for item in top)  # named by CSV column
    assert f"scored 600 rows: {sum(row['flagged'] == '1' for row in scored)} flagged" in result.stderr


def test_chunks_stdin_and_json_lines_give_the_same_scores(csv_run: tuple[Path, Path]) -> None:
    run, table = csv_run
    whole, chunked = io.StringIO(), io.StringIO()
    score_input(ScoreRequest(run, str(table)), io.StringIO(), whole)
    score_input(ScoreRequest(run, "-", chunk_rows=7), io.StringIO(table.read_text()), chunked)
    assert chunked.getvalue() == whole.getvalue()  # bounded chunks change nothing
    lines = [
        json.dumps({"id": row["id"], **{f"p{i}": float(row[f"p{i}"]) for i in range(64)}})
        for row in rows_of(table.read_text())[:5]
    ]
    as_json = io.StringIO()
    outcome = score_input(ScoreRequest(run, "-", top_k=1), io.StringIO("\n".join(lines) + "\n"), as_json)
    records = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert outcome.rows == 5 and [r["id"] for r in records] == ["r0", "r1", "r2", "r3", "r4"]
    assert [f"{r['mse']:.8g}" for r in records] == [row["mse"] for row in rows_of(whole.getvalue())[:5]]
    assert all(len(r["top_features"]) == 1 for r in records)


def test_fail_on_anomaly_sets_the_exit_code_only_when_something_is_flagged(csv_run: tuple[Path, Path]) -> None:
    run, table = csv_run
    runner = CliRunner()
    header, first = table.read_text().splitlines()[:2]
    odd = ",".join(["odd", *["16"] * 64, "0"])  # every pixel at full ink: nothing like a digit
    flagged = runner.invoke(app, ["score", str(run), "-", "--fail-on-anomaly", "3"], input=f"{header}\n{odd}\n")
    assert flagged.exit_code == 3 and "1 flagged" in flagged.stderr
    empty = runner.invoke(app, ["score", str(run), "-", "--fail-on-anomaly", "3"])
    assert empty.exit_code == 2 and "stdin: no rows to score" in empty.stderr  # bad input, not an anomaly
    fine = runner.invoke(
        app, ["score", str(run), "-", "--fail-on-anomaly", "3", "--threshold", "1e9"], input=f"{header}\n{first}\n"
    )
    assert fine.exit_code == 0 and "0 flagged" in fine.stderr


def test_bad_rows_are_one_line_errors_and_nothing_is_written(cli, csv_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, table = csv_run
    lines = table.read_text().splitlines()
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join([*lines[:5], lines[5].replace(",0,", ",x,", 1), *lines[6:9]]) + "\n")
    out = tmp_path / "scores.csv"
    result = cli("score", run, broken, "--out", out, "--top-k", "0")
    assert result.exit_code == 2 and "line 6" in result.stderr and "is not a number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".scores*"))
    out.write_text("keep me")
    again = cli("score", run, table, "--out", out)
    assert again.exit_code == 2 and "already exists" in again.stderr and out.read_text() == "keep me"
    short = tmp_path / "short.csv"
    short.write_text(lines[0] + "\n" + ",".join(lines[1].split(",")[:10]) + "\n")
    assert "line 2 has 10 columns, expected 66" in cli("score", run, short).stderr


def test_images_are_scored_from_npy_with_pixel_names(cli, trained_run: Path, tmp_path: Path) -> None:
    images = load_digits().images[:50]
    np.save(tmp_path / "images.npy", images)
    result = cli("score", trained_run, tmp_path / "images.npy", "--top-k", "2", "--threshold", "max")
    assert result.exit_code == 0, result.output
    scored = rows_of(result.stdout)
    assert len(scored) == 50 and scored[0]["top_features"].startswith("pixel ")
    assert "(mse >" in result.stderr and ", max)" in result.stderr


def test_json_lines_files_blank_lines_bom_and_missing_columns(cli, csv_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, table = csv_run
    rows = rows_of(table.read_text())[:3]
    records = [json.dumps({"id": row["id"], **{f"p{i}": int(row[f"p{i}"]) for i in range(64)}}) for row in rows]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(records[0] + "\n\n" + "\n".join(records[1:]) + "\n")
    result = cli("score", run, jsonl)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["r0", "r1", "r2"]  # JSON in, JSON out
    jsonl.write_text(records[0] + "\n\n" + records[1].replace('"p3": ', '"q3": ') + "\n")
    moved = cli("score", run, jsonl)
    assert moved.exit_code == 2 and "line 3 does not have the first line's keys" in moved.stderr  # the file's line

    lines = table.read_text().splitlines()
    gappy = tmp_path / "gappy.csv"
    gappy.write_text("\n".join([lines[0], "", lines[1], "", lines[2].replace(",0,", ",?,", 1)]) + "\n")
    bad = cli("score", run, gappy)
    assert bad.exit_code == 2 and "line 5," in bad.stderr  # blank lines counted as the file numbers them
    header_only = tmp_path / "header.csv"
    header_only.write_text(lines[0] + "\n")
    assert "no data rows" in cli("score", run, header_only).stderr

    runner = CliRunner()
    bom = runner.invoke(app, ["score", str(run), "-"], input="\ufeff" + "\n".join(lines[:3]) + "\n")
    assert bom.exit_code == 0, bom.output
    assert [row["id"] for row in rows_of(bom.stdout)] == ["r0", "r1"]  # the header's first name is "id", not BOM+id
    missing = cli("score", run, table, "--id-column", "serial")
    assert missing.exit_code == 2 and "no column 'serial' (--id-column)" in missing.stderr
