"""The two shapes every model builder shares: a layer of the plan, and the built autoencoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the plan: a Keras layer class name plus its arguments."""

    part: str  # encoder | decoder
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def activation(self) -> str | None:
        return self.options.get("activation")


class Autoencoder(NamedTuple):
    model: keras.Model
    encoder: keras.Model
    decoder: keras.Model
