"""`aecli validate`: check a config and its data's shape, and plan the model, without TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aecli.augment import check_augment
from aecli.config import AecliConfig, build_config
from aecli.data import peek_sample_shape
from aecli.models import LayerSpec, check_model_fits_memory, count_parameters, plan_autoencoder


@dataclass(frozen=True)
class Validated:
    config: AecliConfig
    input_shape: tuple[int, ...]
    plan: list[LayerSpec]

    @property
    def parameters(self) -> int:
        return count_parameters(self.plan)

    def check_fits_memory(self) -> None:
        check_model_fits_memory(self.plan)


def validate_experiment(path: Path, overrides: Sequence[str]) -> Validated:
    """The resolved config, the data's sample shape and the model's layer plan (printed before
    `check_fits_memory` refuses a model too large to train here)."""
    config = build_config(path, overrides)
    input_shape = peek_sample_shape(config.data)
    config = config.sized_for(input_shape)
    check_augment(config.data.augment, input_shape)
    vocabulary = None if config.data.text is None else config.data.text.max_tokens
    return Validated(config, input_shape, plan_autoencoder(config.model, input_shape, vocabulary))
