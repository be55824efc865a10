"""aecli compare: grid expansion, validation of --vary, divergence, interruption and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aecli.commands.compare import _plot_curves, expand_grid, parse_vary
from aecli.errors import ConfigError


def test_parse_vary_keeps_lists_whole() -> None:
    assert parse_vary("optimizer.name=sgd,adam") == ("optimizer.name", ["sgd", "adam"])
    assert parse_vary("model.encoder=[64, 32],[128]") == ("model.encoder", ["[64, 32]", "[128]"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [("optimizer.name", "expected KEY=V1,V2"), ("loss=mse,,bce", "empty value"), ("loss=mse,mse", "listed twice")],
)
def test_parse_vary_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_vary(spec)


def test_grid_is_the_product_of_every_vary_times_repeats() -> None:
    cells = expand_grid(["optimizer.name=sgd,adam", "loss=mse,bce,mae"], repeats=2, base_seed=7)
    assert len(cells) == 12
    assert cells[0].values == (("optimizer.name", "sgd"), ("loss", "mse")) and cells[0].seed == 7
    assert cells[1].seed == 8 and cells[1].group == cells[0].group
    assert len({cell.key for cell in cells}) == 12


def test_grid_refuses_repeated_keys_and_seed() -> None:
    with pytest.raises(ConfigError, match="given more than once"):
        expand_grid(["loss=mse", "loss=bce"], 1, 0)
    with pytest.raises(ConfigError, match="use --repeats"):
        expand_grid(["training.seed=1,2"], 1, 0)


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        ("optimizer.nme=sgd,adam", "error: --vary optimizer.nme=sgd: optimizer.nme: unknown key; did you mean name?"),
        ("optimizer.name=sgd,rmsprob", "error: --vary optimizer.name=rmsprob: optimizer.name: input should be"),
        ("training.epochs=2,-1", "error: --vary training.epochs=-1: training.epochs: input should be greater than 0"),
    ],
)
def test_invalid_vary_is_one_line_and_trains_nothing(cli, tiny_config, tmp_path: Path, vary: str, message: str):
    result = cli("compare", tiny_config(), "--vary", vary, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and result.stderr.startswith(message), result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_sweep_with_a_diverging_cell(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config(
        {
            "model": {"activation": "tanh", "output_activation": "linear"},
            "optimizer": {"name": "sgd"},
            "training": {"epochs": 2},
        }
    )
    result = cli(
        "compare",
        config,
        "--vary",
        "optimizer.learning_rate=0.01,1000",
        "--repeats",
        "2",
        "--runs-dir",
        tmp_path / "runs",
        "--name",
        "lr",
    )
    assert result.exit_code == 0, result.output
    sweep = Path(result.stdout.strip().splitlines()[-1])
    assert sweep.name.startswith("compare-lr-")
    statuses = {key: cell["status"] for key, cell in json.loads((sweep / "sweep.json").read_text())["cells"].items()}
    assert statuses == {
        "optimizer.learning_rate=0.01,seed=0": "completed",
        "optimizer.learning_rate=0.01,seed=1": "completed",
        "optimizer.learning_rate=1000,seed=0": "diverged",
        "optimizer.learning_rate=1000,seed=1": "diverged",
    }
    table = (sweep / "comparison.md").read_text()
    assert "diverged" in table and "±" in table  # mean ± std over the two seeds of the finite cell
    rows = (sweep / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("optimizer.learning_rate,loss_name,runs,status,final_loss,final_loss_std")
    assert len(rows) == 3
    assert (sweep / "curves.png").is_file() and (sweep / "curves_time.png").is_file()
    assert "retracing" not in result.output  # TensorFlow's tf.function warnings are not the user's business


def test_curves_name_the_full_key_and_give_each_loss_its_own_axis(tmp_path: Path, monkeypatch) -> None:
    drawn: list[list[tuple[str, list[str]]]] = []

    def record(panels, *args) -> None:
        drawn.append([(axis, [series[0] for series in curves]) for axis, curves in panels])

    monkeypatch.setattr("aecli.reporting.plot_series", record)
    cells = expand_grid(["optimizer.name=sgd,adam", "loss=mse,bce"], repeats=1, base_seed=0)
    results = {
        cell.key: {"status": "completed", "monitor": "val_loss", "curve": [0.5, 0.4], "elapsed": [1.0, 2.0]}
        for cell in cells
    }
    _plot_curves(tmp_path, cells, results, {cell.key: dict(cell.values)["loss"] for cell in cells}, log_scale=True)
    assert drawn[0] == [
        ("validation loss: mse", ["optimizer.name=sgd, loss=mse", "optimizer.name=adam, loss=mse"]),
        ("validation loss: bce", ["optimizer.name=sgd, loss=bce", "optimizer.name=adam, loss=bce"]),
    ]
