"""Shared fixtures: tiny configs, the CLI runner, and one trained digits run reused by many tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from aecli.cli import app

# Small enough to train in about a second on 2 cores, big enough for the loss to fall.
TINY = {
    "data": {"source": "digits", "limit": 400},
    "model": {"encoder": [32], "latent_dim": 8},
    "training": {"epochs": 3, "batch_size": 32},
}


def write_config(folder: Path, overrides: dict[str, Any] | None = None, name: str = "tiny.yaml") -> Path:
    config = {section: dict(values) for section, values in TINY.items()}
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Path]:
    def make(overrides: dict[str, Any] | None = None, name: str = "tiny.yaml") -> Path:
        return write_config(tmp_path, overrides, name)

    return make


@pytest.fixture
def cli() -> Callable[..., Any]:
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, [str(arg) for arg in args])

    return invoke


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed digits run (labelled, with a test split), trained once per test session."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, {"training": {"epochs": 4}})
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(folder / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])
