from __future__ import annotations

import json
from pathlib import Path

import pytest

from aecli.config import OPTIMIZER_DEFAULTS, apply_override, config_json_schema, load_config, validate_config
from aecli.errors import ConfigError


def test_defaults_are_resolved_in_one_pass() -> None:
    config = load_config(None)
    assert config.data.source == "digits"
    assert config.model.decoder == [64, 128]  # mirror of the encoder
    assert config.model.output_activation == "sigmoid"  # data is scaled to [0, 1]
    assert config.optimizer.learning_rate == OPTIMIZER_DEFAULTS["adam"]["learning_rate"]
    assert config.optimizer.beta_1 == 0.9 and config.optimizer.momentum is None


def test_unscaled_data_defaults_to_linear_output() -> None:
    assert validate_config({"data": {"scaling": "none"}}).model.output_activation == "linear"


def test_per_optimizer_defaults_fill_only_their_knobs() -> None:
    config = validate_config({"optimizer": {"name": "momentum"}})
    assert (config.optimizer.learning_rate, config.optimizer.momentum) == (0.01, 0.9)
    assert config.optimizer.beta_1 is None


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^optimizer\.learnig_rate: unknown key; did you mean learning_rate\?$"):
        validate_config({"optimizer": {"learnig_rate": 0.1}})


def test_unknown_section_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="modle: unknown key; did you mean model"):
        validate_config({"modle": {}})


def test_knob_of_another_optimizer_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.momentum: does not apply to optimizer 'adam'"):
        validate_config({"optimizer": {"name": "adam", "momentum": 0.5}})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"optimizer": {"learning_rate": -1}}, r"optimizer\.learning_rate: input should be greater than 0, got -1"),
        ({"model": {"encoder": [0, 3]}}, r"model\.encoder\.0: input should be greater than 0, got 0"),
        ({"model": {"latent_dim": "big"}}, r"model\.latent_dim: input should be a valid integer.*got 'big'"),
        ({"loss": "mes"}, r"loss\.name: input should be 'mse', 'bce', 'mae', 'huber' or 'xent', got 'mes'"),
        ({"training": {"epochs": 0}}, r"training\.epochs: input should be greater than 0"),
        ({"data": {"validation_split": 1.5}}, r"data\.validation_split: input should be less than 1"),
        ({"training": "fast"}, r"training: expected a mapping of keys, got 'fast'"),
        ({"data": {"label_column": [1]}}, r"data\.label_column: input should be a valid string or a valid integer"),
        ({"loss": {"name": "mse", "delta": 2}}, r"loss\.delta: applies to the huber loss only"),
    ],
)
def test_wrong_values_name_path_expectation_and_value(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_bce_with_linear_outputs_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"loss\.name: bce needs outputs in \[0,1\]"):
        validate_config({"loss": "bce", "data": {"scaling": "none"}})


def test_early_stopping_on_val_loss_needs_a_validation_split() -> None:
    with pytest.raises(ConfigError, match="needs data.validation_split > 0"):
        validate_config({"data": {"validation_split": 0}, "training": {"early_stopping": True}})


def test_splits_must_leave_training_rows() -> None:
    with pytest.raises(ConfigError, match="must be below 1"):
        validate_config({"data": {"validation_split": 0.5, "test_split": 0.6}})


def test_overrides_parse_yaml_values_and_create_sections() -> None:
    raw: dict = {"loss": "mse"}
    apply_override(raw, "loss.name=bce")
    apply_override(raw, "model.encoder=[16, 8]")
    apply_override(raw, "training.early_stopping.patience=2")
    config = validate_config(raw)
    assert config.loss.name == "bce"
    assert config.model.encoder == [16, 8] and config.model.decoder == [8, 16]
    assert config.training.early_stopping is not None and config.training.early_stopping.patience == 2


@pytest.mark.parametrize("override", ["optimizer.name", "=3", "a..b=1"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, override)


def test_override_into_a_scalar_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"data": {"source": "digits"}}, "data.source.path=x")


def test_override_unknown_key_is_validated_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {latent_dim: 4}\n")
    with pytest.raises(ConfigError, match="training.epoch: unknown key; did you mean epochs"):
        load_config(path, ["training.epoch=3"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("model: [1, 2\n", r"invalid YAML in .*line \d+"),
        ("- 1\n- 2\n", "must hold a mapping of sections, got a list"),
        ("", "config file is empty"),
    ],
)
def test_unreadable_config_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_tags_that_would_run_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_json_schema_describes_every_section() -> None:
    schema = config_json_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == {"data", "model", "optimizer", "loss", "training", "anomaly", "runtime"}
    assert schema["$defs"]["ModelConfig"]["additionalProperties"] is False


def test_a_saved_config_reloads_to_the_same_values(tmp_path: Path) -> None:
    """Strings that YAML 1.2 reads as numbers are quoted when saved (found by tests/test_fuzz.py)."""
    from aecli.config import config_to_yaml

    config = load_config(None, ["data.source='1e39'", "data.label_column='1E3'", "data.id_column='true'"])
    (tmp_path / "saved.yaml").write_text(config_to_yaml(config))
    again = load_config(tmp_path / "saved.yaml")
    assert again == config and again.data.label_column == "1E3" and again.data.id_column == "true"


def test_null_resets_a_key_to_its_default_and_the_decoder_mirrors_the_encoder() -> None:
    assert validate_config({"model": {"encoder": None}}).model.decoder == [64, 128]
    assert validate_config({"model": {"encoder": [40, 20]}}).model.decoder == [20, 40]
    conv = validate_config({"model": {"kind": "conv", "kernel_size": None, "encoder": None}}).model
    assert (conv.kernel_size, conv.encoder, conv.decoder) == (3, [], [])
    assert validate_config({"optimizer": {"name": "sgd", "learning_rate": None}}).optimizer.learning_rate == 0.01


def test_knobs_of_another_kind_are_refused_when_set_and_left_out_when_saved() -> None:
    from aecli.config import dump_config

    saved = dump_config(validate_config({"model": {"kind": "dense"}, "loss": "mse"}))
    assert not {"filters", "kernel_size", "downsample", "body", "beta"} & set(saved["model"])
    assert "delta" not in saved["loss"] and set(saved["training"]["lr_schedule"]) == {"kind"}
    vae = dump_config(validate_config({"model": {"kind": "vae", "body": "conv"}}))["model"]
    assert (vae["beta"], vae["kernel_size"], vae["filters"]) == (1.0, 3, [32, 64])
    with pytest.raises(ConfigError, match=r"model\.body: applies to model\.kind vae only"):
        validate_config({"model": {"kind": "conv", "body": "dense", "beta": 2}})  # the first as written


def test_commands_that_take_some_keys_refuse_the_others() -> None:
    from aecli.config import build_config

    base = {"data": {"source": "digits"}}
    assert build_config(base=base, overrides=["data.limit=5"], allowed=("data",)).data.limit == 5
    for override in ("data=null", "model.latent_dim=2"):
        with pytest.raises(ConfigError, match=r"--data takes data\.KEY=VALUE overrides only"):
            build_config(base=base, overrides=[override], allowed=("data",), command="--data")
    with pytest.raises(ConfigError, match="prepare takes data.limit overrides only"):
        build_config(base=base, overrides=["data.limit.x=1"], allowed=("data.limit",), command="prepare")


def test_data_paths_are_made_absolute_when_loading_and_an_empty_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    assert validate_config({"data": {"source": "rows.csv"}}).data.source == str(tmp_path / "rows.csv")
    assert validate_config({"data": {"source": "missing.csv"}}).data.source == "missing.csv"  # for its error
    assert validate_config({}).data.source == "digits"
    with pytest.raises(ConfigError, match="data.source: expected digits, mnist, fashion_mnist or a path, got ' '"):
        validate_config({"data": {"source": " "}})
