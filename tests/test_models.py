from __future__ import annotations

import pytest

from aecli.config import ModelConfig, validate_config
from aecli.errors import ConfigError
from aecli.models import build_autoencoder, check_model_fits_memory, count_parameters, plan_autoencoder

SEED_MODEL = {
    "encoder": [128, 64],
    "latent_dim": 32,
    "latent_activation": "relu",
    "decoder": [64, 128],
    "output_activation": "sigmoid",
}


def test_reference_model_plan_has_222384_parameters() -> None:
    plan = plan_autoencoder(ModelConfig(**SEED_MODEL), (28, 28, 1))
    assert count_parameters(plan) == 222_384
    dense = [spec.options["units"] for spec in plan if spec.kind == "Dense"]
    assert dense == [128, 64, 32, 64, 128, 784]


def test_built_model_matches_the_plan_and_maps_inputs_to_their_shape() -> None:
    cfg = ModelConfig(**SEED_MODEL)
    autoencoder = build_autoencoder(cfg, (28, 28, 1))
    assert autoencoder.model.count_params() == count_parameters(plan_autoencoder(cfg, (28, 28, 1)))
    assert autoencoder.model.output_shape == (None, 28, 28, 1)
    assert autoencoder.encoder.output_shape == (None, 32)
    assert autoencoder.decoder.input_shape == (None, 32)
    assert autoencoder.model.layers[-1].layers[-2].activation.__name__ == "sigmoid"


def test_tabular_input_has_no_flatten_or_reshape() -> None:
    plan = plan_autoencoder(validate_config({}).model, (5,))
    assert [spec.kind for spec in plan] == ["Dense"] * 6
    assert plan[-1].output_shape == (5,)


def test_absurd_layer_is_refused_before_allocating() -> None:
    cfg = ModelConfig(encoder=[1_000_000_000], latent_dim=2, output_activation="sigmoid")
    with pytest.raises(ConfigError, match=r"parameters need about [\d.]+ GiB to train"):
        check_model_fits_memory(plan_autoencoder(cfg, (784,)))
