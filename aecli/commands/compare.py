"""`aecli compare`: train a grid of configs side by side and rank them on one common metric.

Every cell is a normal training run inside the sweep folder. `sweep.json` records each
cell's outcome as soon as it ends, so an interrupted sweep keeps its finished cells and
`--resume` trains only the rest. Losses on different scales (MSE vs BCE) cannot be compared
on their own values: cells are ranked by test-set reconstruction MSE.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aecli import reporting
from aecli.atomic import write_json_atomic, write_text_atomic
from aecli.backend import select_backend
from aecli.config import AecliConfig, load_config
from aecli.errors import AecliError, ConfigError, RunError, TrainingDivergedError
from aecli.reporting import Series, read_history_csv
from aecli.runs import create_run_dir, now_iso

SWEEP_FILE = "sweep.json"
WITHIN_BEST = 0.05  # "epochs to reach within 5% of the best loss found by any cell"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the varied values (key -> YAML text) and its seed."""

    values: tuple[tuple[str, str], ...]
    seed: int

    @property
    def key(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values) + f",seed={self.seed}"

    @property
    def group(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values)

    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values] + [f"training.seed={self.seed}"]


@dataclass
class CompareRequest:
    config: Path
    vary: list[str]
    overrides: list[str] = field(default_factory=list)
    repeats: int = 1
    runs_dir: Path = Path("runs")
    name: str | None = None
    resume: Path | None = None
    log_scale: bool = True


@dataclass
class CompareOutcome:
    sweep_dir: Path
    rows: list[dict[str, Any]]
    varied: list[str]
    best: str | None


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """`optimizer.name=sgd,adam` -> ("optimizer.name", ["sgd", "adam"]); commas inside [] stay."""
    key, sep, text = spec.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(f"--vary {spec!r}: expected KEY=V1,V2,... e.g. --vary optimizer.name=sgd,adam")
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if any(not value for value in values):
        raise ConfigError(f"--vary {spec!r}: empty value in the list")
    if len(set(values)) != len(values):
        raise ConfigError(f"--vary {spec!r}: a value is listed twice")
    return key, values


def expand_grid(varies: list[str], repeats: int, base_seed: int) -> list[Cell]:
    """The product of every --vary, each combination repeated with seeds base_seed, base_seed+1, ..."""
    parsed = [parse_vary(spec) for spec in varies]
    keys = [key for key, _ in parsed]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise ConfigError(f"--vary {sorted(duplicates)[0]}: given more than once; list all its values in one --vary")
    if any(key == "training.seed" for key in keys):
        raise ConfigError("--vary training.seed: use --repeats N to run several seeds per cell")
    combos = itertools.product(*[[(key, value) for value in values] for key, values in parsed])
    return [Cell(tuple(combo), base_seed + r) for combo in combos for r in range(repeats)]


def _cell_configs(request: CompareRequest) -> tuple[list[Cell], dict[Cell, AecliConfig]]:
    base = load_config(request.config, request.overrides)
    if not request.vary:
        raise ConfigError("give at least one --vary KEY=V1,V2,...")
    if request.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {request.repeats}")
    cells = expand_grid(request.vary, request.repeats, base.training.seed)
    if any(key == "runtime.backend" for cell in cells[:1] for key, _ in cell.values):
        raise ConfigError("--vary runtime.backend: one process runs one backend; run one compare per backend")
    configs: dict[Cell, AecliConfig] = {}
    for cell in cells:
        try:
            configs[cell] = load_config(request.config, [*request.overrides, *cell.overrides()])
        except ConfigError as exc:
            raise ConfigError(f"--vary {cell.group}: {exc}") from None
        if configs[cell].training.distribute.strategy == "multi_worker":
            # TensorFlow joins a process to its cluster once (collective ops are configured when
            # its runtime starts) and cannot leave it or rejoin with another model.
            raise ConfigError(
                "training.distribute.strategy: multi_worker joins this process to its TF_CONFIG cluster once, "
                "for one model, and TensorFlow cannot tear that down to train the next cell; start each cell "
                "on every worker with aecli train CONFIG --set KEY=VALUE instead"
            )
    return cells, configs


def run_comparison(request: CompareRequest, reporter_factory: Any = None, say: Any = print) -> CompareOutcome:
    """Train every cell not finished yet, then write comparison.csv/.md and the curve plots."""
    cells, configs = _cell_configs(request)
    select_backend(configs[cells[0]].runtime.backend)
    sweep = _open_sweep(request, cells)
    sweep_dir = Path(sweep["path"])
    records: dict[str, dict[str, Any]] = sweep["cells"]
    from aecli.commands.train import train_run

    for number, cell in enumerate(cells, start=1):
        if records.get(cell.key, {}).get("status") in ("completed", "diverged"):
            say(f"[{number}/{len(cells)}] {cell.key}: already {records[cell.key]['status']}, skipped")
            continue
        say(f"[{number}/{len(cells)}] {cell.key}")
        _discard_unfinished(sweep_dir, records.get(cell.key, {}))
        record: dict[str, Any] = {"values": dict(cell.values), "seed": cell.seed, "started": now_iso()}
        started_dirs: list[Path] = []
        try:
            outcome = train_run(
                configs[cell],
                runs_dir=sweep_dir,
                name=_slug(cell),
                command=_command_line(),
                reporter=reporter_factory() if reporter_factory else None,
                on_run_dir=started_dirs.append,
            )
            record.update(status="completed", run_dir=outcome.run_dir.name)
        except TrainingDivergedError as exc:
            record.update(status="diverged", error=str(exc))
        except KeyboardInterrupt:
            record.update(status="interrupted")
            raise
        except AecliError as exc:
            record.update(status="failed", error=str(exc))
        finally:
            if started_dirs and "run_dir" not in record:
                record["run_dir"] = started_dirs[0].name
            records[cell.key] = record
            write_json_atomic(sweep_dir / SWEEP_FILE, sweep)
        if record["status"] == "completed":
            training = outcome.metrics["training"]
            validated = training["final_val_loss"] is not None
            final = training["final_val_loss"] if validated else training["final_loss"]
            measure, value = test_error(outcome.metrics)
            say(
                f"    final {'val loss' if validated else 'loss'} {final:.4g}, test {measure} "
                f"{value:.4g}, {training['epochs_run']} epochs in "
                f"{training['wall_seconds']:.1f}s"
            )
        else:
            say(f"    {record['status']}: {record.get('error', '')}")
    return _summarise(sweep_dir, cells, records, configs, request.log_scale)


def _discard_unfinished(sweep_dir: Path, record: dict[str, Any]) -> None:
    """An interrupted or failed cell is trained again from scratch: its old run folder goes."""
    name = record.get("run_dir")
    if name and record.get("status") not in ("completed", "diverged"):
        old = sweep_dir / str(name)
        if old.parent == sweep_dir and (old / "run.json").is_file():
            shutil.rmtree(old, ignore_errors=True)


def _open_sweep(request: CompareRequest, cells: list[Cell]) -> dict[str, Any]:
    grid = {"config": str(request.config), "vary": request.vary, "set": request.overrides, "repeats": request.repeats}
    if request.resume is None:
        name = request.name or request.config.stem
        sweep_dir = create_run_dir(request.runs_dir, f"compare-{name}")
        sweep = {"path": str(sweep_dir), "created": now_iso(), "grid": grid, "cells": {}}
        write_json_atomic(sweep_dir / SWEEP_FILE, sweep)
        return sweep
    path = request.resume / SWEEP_FILE
    if not path.is_file():
        raise RunError(f"--resume {request.resume}: not a sweep folder (no {SWEEP_FILE})")
    try:
        sweep = json.loads(path.read_text(encoding="utf-8"))
        recorded = sweep["grid"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise RunError(f"--resume {request.resume}: unreadable {SWEEP_FILE} ({exc})") from None
    if (recorded["vary"], recorded["set"], recorded["repeats"]) != (grid["vary"], grid["set"], grid["repeats"]):
        raise RunError(
            f"--resume {request.resume}: this sweep was started with --vary {recorded['vary']}, --set "
            f"{recorded['set']}, --repeats {recorded['repeats']}; repeat the same options to resume it"
        )
    sweep["path"] = str(request.resume)
    return sweep


def _slug(cell: Cell) -> str:
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in cell.values]
    return "_".join([*parts, f"seed-{cell.seed}"])


def _command_line() -> str:
    return shlex.join(["aecli", *sys.argv[1:]])


def _cell_result(sweep_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"status": record.get("status", "missing")}
    if result["status"] != "completed":
        return result
    run_dir = sweep_dir / record["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    history = read_history_csv(run_dir / "history.csv")
    monitor = "val_loss" if "val_loss" in history[0] else "loss"
    curve = [row[monitor] for row in history]
    elapsed = list(itertools.accumulate(row["seconds"] for row in history))
    training = metrics["training"]
    result.update(
        monitor=monitor,
        curve=curve,
        elapsed=elapsed,
        final_loss=curve[-1],
        best_loss=min(curve),
        best_epoch=curve.index(min(curve)) + 1,
        test_mse=test_error(metrics)[1],
        test_measure=test_error(metrics)[0],
        wall_seconds=training["wall_seconds"],
        samples_per_second=training["samples_per_second"],
    )
    return result


def test_error(metrics: dict[str, Any]) -> tuple[str, float]:
    """The test-split error every cell reports: mse (for bags of words, of each word's presence,
    whichever loss trained them), or for sequence models, which have no mse, their token
    cross-entropy (always their loss)."""
    reconstruction = metrics["reconstruction"]
    return ("mse", reconstruction["mse"]) if "mse" in reconstruction else ("xent", reconstruction["xent"])


NUMERIC_COLUMNS = (
    "final_loss",
    "best_loss",
    "best_epoch",
    "test_mse",
    "epochs_to_5pct",
    "wall_seconds",
    "samples_per_second",
)


def column_titles(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Table titles of NUMERIC_COLUMNS; the loss columns name what they are: the validation loss
    when every cell has a validation split, the training loss otherwise."""
    monitored = {row.get("monitor") for row in rows if row.get("monitor")}
    loss = "val loss" if monitored == {"val_loss"} else "loss" if monitored == {"loss"} else "val (or train) loss"
    return {
        "final_loss": f"final {loss}",
        "best_loss": f"best {loss}",
        "best_epoch": "best epoch",
        "test_mse": "test xent" if {row.get("test_measure") for row in rows} == {"xent"} else "test MSE",
        "epochs_to_5pct": "epochs to 5% of best",
        "wall_seconds": "seconds",
        "samples_per_second": "samples/s",
    }


def _summarise(
    sweep_dir: Path,
    cells: list[Cell],
    records: dict[str, dict[str, Any]],
    configs: dict[Cell, AecliConfig],
    log_scale: bool,
) -> CompareOutcome:
    results = {cell.key: _cell_result(sweep_dir, records.get(cell.key, {})) for cell in cells}
    # Loss values are only comparable between cells that train on the same loss.
    best_by_loss: dict[str, float] = {}
    for cell in cells:
        result = results[cell.key]
        if result["status"] == "completed":
            loss = configs[cell].loss.name
            best_by_loss[loss] = min(best_by_loss.get(loss, math.inf), result["best_loss"])
    for cell in cells:
        result = results[cell.key]
        if result["status"] == "completed":
            target = best_by_loss[configs[cell].loss.name] * (1 + WITHIN_BEST)
            reached = [epoch for epoch, value in enumerate(result["curve"], start=1) if value <= target]
            result["epochs_to_5pct"] = reached[0] if reached else None

    varied = [key for key, _ in cells[0].values]
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    rows = []
    for group, members in groups.items():
        done = [results[c.key] for c in members if results[c.key]["status"] == "completed"]
        statuses = sorted({results[c.key]["status"] for c in members})
        row: dict[str, Any] = {
            **dict(members[0].values),
            "loss_name": configs[members[0]].loss.name,
            "runs": f"{len(done)}/{len(members)}",
            "monitor": done[0]["monitor"] if done else None,
            "test_measure": done[0]["test_measure"] if done else None,
            "status": "/".join(statuses),
            "group": group,
        }
        for column in NUMERIC_COLUMNS:
            values = [r[column] for r in done if r.get(column) is not None]
            row[column] = sum(values) / len(values) if values else None
            row[f"{column}_std"] = _std(values) if len(values) > 1 else None
        rows.append(row)
    ranked = sorted((r for r in rows if r["test_mse"] is not None), key=lambda r: r["test_mse"])
    best = ranked[0]["group"] if ranked else None
    _write_tables(sweep_dir, rows, varied)
    _plot_curves(sweep_dir, cells, results, {cell.key: configs[cell].loss.name for cell in cells}, log_scale)
    return CompareOutcome(sweep_dir, rows, varied, best)


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_value(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "diverged" if "diverged" in row["status"] and column == "test_mse" else "-"
    text = f"{value:.0f}" if column in ("samples_per_second",) else f"{value:.4g}"
    spread = row.get(f"{column}_std")
    return f"{text} ± {spread:.2g}" if spread is not None else text


def _write_tables(sweep_dir: Path, rows: list[dict[str, Any]], varied: list[str]) -> None:
    buffer = io.StringIO()
    columns = [*varied, "loss_name", "runs", "status"]
    numeric = [name for column in NUMERIC_COLUMNS for name in (column, f"{column}_std")]
    writer = csv.DictWriter(buffer, fieldnames=columns + numeric, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns + numeric})
    write_text_atomic(sweep_dir / "comparison.csv", buffer.getvalue())

    headers = [*varied, "status", *column_titles(rows).values()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in sorted(rows, key=lambda r: (r["test_mse"] is None, r["test_mse"] or 0)):
        cells = [str(row[key]) for key in varied] + [row["status"]]
        cells += [format_value(row, column) for column in NUMERIC_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Ranked by test-set reconstruction MSE (comparable across losses). Loss columns are in each "
        'cell\'s own training loss; "epochs to 5% of best" compares cells that share a loss. '
        "mean ± std over seeds when repeated."
    )
    write_text_atomic(sweep_dir / "comparison.md", "\n".join(lines) + "\n\n" + note + "\n")


def _plot_curves(
    sweep_dir: Path,
    cells: list[Cell],
    results: dict[str, dict[str, Any]],
    loss_names: dict[str, str],
    log_scale: bool,
) -> None:
    """curves.png and curves_time.png: each cell's monitored loss, one panel per loss function
    (`loss_names`: cell key -> loss), since a BCE of 0.3 and an MSE of 0.03 are not comparable."""
    by_epoch: dict[str, Series] = {}
    by_time: dict[str, Series] = {}
    for cell in cells:
        result = results[cell.key]
        if result["status"] != "completed":
            continue
        short = ", ".join(f"{key}={value}" for key, value in cell.values)
        label = short + (f" (seed {cell.seed})" if any(c.group == cell.group and c != cell for c in cells) else "")
        split = "validation" if result["monitor"] == "val_loss" else "training"
        panel = f"{split} loss: {loss_names[cell.key]}"
        epochs = [float(epoch) for epoch in range(1, len(result["curve"]) + 1)]
        by_epoch.setdefault(panel, []).append((label, epochs, result["curve"]))
        by_time.setdefault(panel, []).append((label, result["elapsed"], result["curve"]))
    if not by_epoch:
        return
    reporting.plot_series(list(by_epoch.items()), "epoch", "Loss per epoch", sweep_dir / "curves.png", log_scale)
    reporting.plot_series(
        list(by_time.items()),
        "training seconds",
        "Loss against wall-clock time",
        sweep_dir / "curves_time.png",
        log_scale,
    )
