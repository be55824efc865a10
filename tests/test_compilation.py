"""`training.jit_compile: auto`: the rules, without TensorFlow, and what a real run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aecli.compilation import resolve_jit_compile
from aecli.config import validate_config
from aecli.models import plan_autoencoder


def kinds_of(model: dict, shape: tuple[int, ...]) -> set[str]:
    return {layer.kind for layer in plan_autoencoder(validate_config({"model": model}).model, shape)}


def test_auto_is_the_default_and_turns_xla_off_for_conv_models_on_a_cpu() -> None:
    assert validate_config({}).training.jit_compile == "auto"
    for model in ({"kind": "conv"}, {"kind": "conv", "downsample": "maxpool"}, {"kind": "vae", "body": "conv"}):
        decision = resolve_jit_compile("auto", kinds_of(model, (28, 28, 1)), "tensorflow", False, False)
        assert decision.enabled is False, model
        assert "Conv2D" in decision.reason and "without XLA" in decision.reason


def test_auto_turns_xla_off_for_sequence_models_on_a_cpu() -> None:
    for model, layer in (({"kind": "conv1d"}, "Conv1D"), ({"kind": "lstm"}, "LSTM"), ({"kind": "gru"}, "GRU")):
        decision = resolve_jit_compile("auto", kinds_of(model, (32, 2)), "tensorflow", False, False)
        assert decision.enabled is False and layer in decision.reason, model
    assert resolve_jit_compile("auto", kinds_of({"kind": "dense"}, (32, 2)), "tensorflow", False, False).enabled


def test_auto_keeps_xla_where_it_wins() -> None:
    dense = kinds_of({"kind": "dense"}, (784,))
    assert resolve_jit_compile("auto", dense, "tensorflow", False, False).enabled is True
    assert resolve_jit_compile("auto", kinds_of({"kind": "vae"}, (64,)), "tensorflow", False, False).enabled
    conv = kinds_of({"kind": "conv"}, (28, 28, 1))
    assert resolve_jit_compile("auto", conv, "tensorflow", True, False).enabled is True  # a GPU
    assert resolve_jit_compile("auto", conv, "jax", False, False).enabled is True  # JAX is XLA
    assert resolve_jit_compile("auto", dense, "torch", False, False).enabled is False


@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_wins_except_under_tf_distribute(setting: bool) -> None:
    conv = kinds_of({"kind": "conv"}, (28, 28, 1))
    decision = resolve_jit_compile(setting, conv, "tensorflow", False, False)
    assert (decision.enabled, decision.setting, decision.reason) == (setting, setting, "set in the config")
    assert resolve_jit_compile(setting, conv, "tensorflow", False, True).enabled is False


def test_a_trained_conv_run_records_the_resolved_choice(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config({"model": {"kind": "conv", "filters": [8], "latent_dim": 4}, "training": {"epochs": 1}})
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    recorded = json.loads((run / "run.json").read_text())["jit_compile"]
    assert recorded["enabled"] is False and recorded["setting"] == "auto"
    assert "Conv2D" in recorded["reason"]
