"""The experiment schema: YAML -> one validation pass -> a fully resolved `AecliConfig`.

Every default lives here, once. Validation also resolves the defaults that depend on
other fields (the mirrored decoder, the output activation, per-optimizer knobs), so the
object that leaves `load_config` is never mutated again and is exactly what a run saves.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from aecli.errors import AecliError, ConfigError, clip, shorten
from aecli.safe_yaml import CORE_RESOLVERS, MAX_DOCUMENT_BYTES, load_yaml
from aecli.thresholds import AUTO_THRESHOLD, auto_threshold, parse_threshold

Activation = Literal[
    "relu", "elu", "selu", "gelu", "silu", "swish", "leaky_relu", "tanh", "sigmoid", "softplus", "linear"
]
OutputActivation = Literal["sigmoid", "linear", "tanh", "relu", "softplus", "softmax"]
OptimizerName = Literal["gd", "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam"]
LossName = Literal["mse", "bce", "mae", "huber", "xent"]
# Model kinds for text (data.text): bags of words and token sequences.
TEXT_KINDS = ("bow", "sequence")
# Noise kinds that corrupt token sequences (TSDAE-style denoising) rather than values.
WORD_NOISES = ("word_deletion", "word_mask", "word_swap")

# The knobs each optimizer understands, with the value used when the YAML leaves one out
# (Keras's own defaults, except `momentum`, which would make the momentum optimizers plain SGD).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "gd": {"learning_rate": 0.01},
    "sgd": {"learning_rate": 0.01},
    "momentum": {"learning_rate": 0.01, "momentum": 0.9},
    "nesterov": {"learning_rate": 0.01, "momentum": 0.9},
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False},
    "adamw": {
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
        "weight_decay": 0.004,
    },
    "rmsprop": {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False},
    "adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
    "nadam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
}
# Knobs every optimizer accepts, off unless set.
COMMON_OPTIMIZER_KNOBS = ("weight_decay", "clipnorm")

BUILTIN_SOURCES = ("digits", "mnist", "fashion_mnist")


class _Section(BaseModel):
    """Strict base: unknown keys are errors, assignments after validation are refused, numbers
    are finite, and a boolean is never read as a number (`epochs: true` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    def _inapplicable(self) -> dict[str, str]:
        """Knobs that do not apply to this section as configured (kind, name...), with why: they
        are refused when set and left out when the config is saved."""
        return {}

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """`key: null` (or `--set key=null`) resets a key to its default."""
        if not isinstance(data, dict):
            return data
        return {key: value for key, value in data.items() if value is not None or _accepts_none(cls, key)}

    @model_validator(mode="after")
    def _refuse_inapplicable(self) -> Any:
        inapplicable = self._inapplicable()
        for knob in type(self).model_fields:  # the first in the schema's order, as written
            if knob in self.model_fields_set and knob in inapplicable:
                raise ValueError(f"{knob}: {inapplicable[knob]}")
        return self

    @model_serializer(mode="wrap")
    def _leave_out_inapplicable(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for knob in self._inapplicable():
            data.pop(knob, None)
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and _wants_number_not_bool(cls.model_fields[info.field_name]):
            raise PydanticCustomError("bool_as_number", "expected a number, not a boolean")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _floats_fit_float32(cls, value: Any) -> Any:
        """Every number is used as a float32 by Keras: 1e39 would silently become inf."""
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise PydanticCustomError("float32_range", "expected a number within float32's range (about ±3.4e38)")
        return value


FLOAT32_MAX = 3.4028234663852886e38


def _accepts_none(section: type[BaseModel], key: str) -> bool:
    field = section.model_fields.get(key)
    return field is None or type(None) in get_args(field.annotation)


def _wants_number_not_bool(field: FieldInfo) -> bool:
    kinds: set[Any] = set()
    pending = [field.annotation]
    while pending:
        annotation = pending.pop()
        args = get_args(annotation)
        if get_origin(annotation) is Annotated:
            pending.append(args[0])
        elif args and get_origin(annotation) is not Literal:
            pending.extend(args)
        else:
            kinds.add(annotation)
    return bool(kinds & {int, float}) and bool not in kinds


# Augmentations that move pixels (Keras's RandomTranslation, RandomRotation, RandomZoom, RandomFlip).
GEOMETRIC_AUGMENTATIONS = ("translation", "rotation", "zoom", "flip")


class AugmentConfig(_Section):
    """Random changes to the training images, drawn afresh every epoch (amounts as Keras's
    preprocessing layers take them; see augment.py); validation and test data are never
    augmented. Every amount 0 (the default) is no augmentation, so `aecli compare --vary
    data.augment.rotation=0,0.1` has a plain baseline."""

    translation: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="shift by up to this fraction of the height and of the width (RandomTranslation)",
    )
    rotation: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="rotate by up to this fraction of a full turn either way, e.g. 0.05 = 18 degrees (RandomRotation)",
    )
    zoom: float = Field(0.0, ge=0.0, lt=1.0, description="zoom in or out by up to this fraction (RandomZoom)")
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = Field(
        "none", description="mirror half of the images at random (RandomFlip)"
    )
    contrast: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="multiply the contrast by a factor in [1 - contrast, 1 + contrast] (RandomContrast)",
    )
    fill_mode: Literal["nearest", "constant", "reflect", "wrap"] = Field(
        "nearest", description="how pixels moved in from outside the image are filled (constant: with 0)"
    )

    @property
    def active(self) -> list[str]:
        """The augmentations this config applies, in the order they are applied."""
        on = {"translation": self.translation, "rotation": self.rotation, "zoom": self.zoom}
        on |= {"flip": self.flip != "none", "contrast": self.contrast}
        return [name for name, value in on.items() if value]

    def describe(self) -> str:
        """One line for reports, e.g. "rotation 0.05, flip horizontal"; "none" when nothing is on."""
        return ", ".join(f"{name} {getattr(self, name)}" for name in self.active) or "none"


class SeriesConfig(_Section):
    """A CSV of observations over time (one row per time step), cut into sliding windows."""

    time_column: str | int | None = Field(
        None, description="column (name or index) of the timestamps; default: rows are in time order, untimed"
    )
    value_columns: list[str | int] | None = Field(
        None, min_length=1, description="columns (names or indexes) of the values; default: every other column"
    )
    time_format: str | None = Field(
        None, description="strptime format of the timestamps, e.g. '%d/%m/%Y %H:%M'; default: ISO 8601"
    )
    missing: Literal["refuse", "interpolate", "ffill"] = Field(
        "refuse",
        description="empty or NaN values: refuse (an error naming the line), interpolate linearly, or carry the "
        "last value forward",
    )
    learn: Literal["all", "probation"] = Field(
        "all",
        description="which rows training reads: all, or the probationary period of the Numenta Anomaly Benchmark "
        "(the first min(15% of rows, 750)): a stream's detector learns from its start and scores the rest",
    )
    disorder: Literal["keep", "drop", "refuse"] = Field(
        "keep",
        description="a time equal to or earlier than the one before it (a clock change, a glitch at the source): keep "
        "the row in arrival order, as a live stream must (said in a note), drop it (a note), or refuse the file "
        "(an error naming the lines)",
    )


class WindowConfig(_Section):
    size: PositiveInt = Field(64, le=1_000_000, description="time steps per window (one sample)")
    stride: PositiveInt = Field(1, description="time steps between the starts of consecutive windows")


class SequencesConfig(_Section):
    """One equal-length sequence per row (the UCR/UEA archive layout), each row one sample."""

    label: Literal["first", "last", "none"] = Field(
        "first", description="where each row's label is: first (UCR), last (the TensorFlow tutorial's ecg.csv), none"
    )


class TextConfig(_Section):
    """Texts turned into model inputs by Keras's TextVectorization, adapted on the training split
    only and saved with the run (vocabulary.tsv)."""

    max_tokens: int = Field(
        10_000, ge=3, le=1_000_000, description="vocabulary size, the out-of-vocabulary token (and padding) included"
    )
    standardize: Literal["lower_and_strip_punctuation", "lower", "strip_punctuation", "none"] = Field(
        "lower_and_strip_punctuation", description="how texts are normalised before splitting on whitespace"
    )
    ngrams: int = Field(1, ge=1, le=3, description="bags of words: also count word n-grams up to this length")
    output: Literal["tf_idf", "count", "multi_hot", "tokens"] = Field(
        "tf_idf",
        description="tf_idf, count or multi_hot vectors (model.kind bow, dense, vae) or token ids (model.kind "
        "sequence, the default for it)",
    )
    sequence_length: int = Field(
        32, ge=2, le=4096, description="tokens: texts are cut to this many tokens (documented truncation) or padded"
    )
    vocabulary: Path | None = Field(
        None,
        description="a saved vocabulary (a run's vocabulary.tsv) to use instead of adapting one: how a trained "
        "run reads new texts",
    )
    stream: bool | None = Field(
        None,
        description="training reads the texts a block at a time instead of holding them and their vectors in "
        "memory (one pass counts them and adapts the vocabulary); unset: streamed when their vectors would "
        "need more than a quarter of this machine's memory",
    )

    @model_validator(mode="after")
    def _room_for_words(self) -> TextConfig:
        if self.output == "tokens" and self.max_tokens < 4:
            raise ValueError(
                f"max_tokens: {self.max_tokens} leaves token outputs room for {self.max_tokens - 2} word(s) besides "
                "padding and [UNK]; use at least 4"
            )
        return self

    def _inapplicable(self) -> dict[str, str]:
        if self.output == "tokens":
            return {"ngrams": "applies to bag-of-words outputs (tf_idf, count, multi_hot), not tokens"}
        return {"sequence_length": f"applies to output tokens only, not {self.output!r}"}

    @field_validator("vocabulary")
    @classmethod
    def _absolute_vocabulary(cls, path: Path | None) -> Path | None:
        return None if path is None else _absolute_if_present(path)


# Scalings whose output is not in [0, 1]: the default output activation is then linear.
UNBOUNDED_SCALINGS = ("none", "zscore", "zscore_global", "robust")


class DataConfig(_Section):
    source: str = Field(
        "digits",
        description="digits (scikit-learn, offline), mnist, fashion_mnist (keras.datasets), or a path to an "
        "IDX file or folder, .npz, .npy or .csv file",
    )
    labels_path: Path | None = Field(None, description="labels for an IDX/.npy source (IDX or .npy)")
    label_column: str | int | None = Field(
        None, description="CSV/TSV column (name or index) or JSON Lines key holding the labels"
    )
    text_column: str | int | Annotated[list[str | int], Field(min_length=1)] | None = Field(
        None,
        description="text sources: the CSV/TSV column (name or index) or JSON Lines key holding the texts; a list "
        "reads each listed column as texts of their own (both sentences of a pair)",
    )
    text: TextConfig | None = Field(
        None,
        description="data.source holds texts (.txt: one per line; .csv, .tsv, .jsonl with text_column): how they "
        "are vectorized; `true` = defaults",
    )
    id_column: str | int | None = Field(
        None, description="CSV column (name or index) holding each row's id, carried into per-sample outputs"
    )
    validation_split: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the training rows held out")
    test_split: float = Field(0.2, gt=0.0, lt=1.0, description="test fraction when the source has no test set")
    classes: list[int | str] | None = Field(
        None, min_length=1, description="train only on these labels, as written in the data (numbers or names)"
    )
    limit: PositiveInt | None = Field(None, description="read at most this many rows of each source split")
    scaling: Literal["auto", "minmax", "global", "zscore", "zscore_global", "robust", "none"] = Field(
        "auto",
        description="auto: uint8 /255, other images global min-max, tabular per-feature min-max, series z-score "
        "per channel, sequences min-max per channel; zscore: (x - mean) / std per feature (per channel for "
        "series); robust: (x - median) / (IQR / 1.349) per feature, which outliers in the training rows barely "
        "move (the std where the IQR is 0); all fitted on the training split",
    )
    series: SeriesConfig | None = Field(
        None, description="data.source is a CSV of values over time: cut it into windows (data.window), split by time"
    )
    window: WindowConfig = Field(default_factory=WindowConfig, description="series only: sliding windows")
    sequences: SequencesConfig | None = Field(
        None, description="data.source holds one equal-length sequence per row (UCR/UEA layout); `true` = defaults"
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig,
        description="random translation, rotation, zoom, flip and contrast of the training images (off by default)",
    )

    @field_validator("series", "sequences", "text", mode="before")
    @classmethod
    def _layout_switch(cls, value: Any) -> Any:
        return _expand_switch(value)

    @property
    def is_series(self) -> bool:
        """Samples are sequences over time (windows of a series, or one sequence per row)."""
        return self.series is not None or self.sequences is not None

    def _inapplicable(self) -> dict[str, str]:
        return {} if self.series is not None else {"window": "applies to a series source (data.series) only"}

    @property
    def is_text(self) -> bool:
        return self.text is not None

    @field_validator("classes", mode="before")
    @classmethod
    def _no_boolean_classes(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(item, bool) for item in value):
            raise PydanticCustomError("bool_as_label", "labels are numbers or names, not booleans")
        return value

    @field_validator("source")
    @classmethod
    def _absolute_source(cls, source: str) -> str:
        """Saved with absolute paths, so evaluate/reconstruct find a run's data from any folder."""
        if not source.strip():
            raise PydanticCustomError("empty_source", f"expected {', '.join(BUILTIN_SOURCES)} or a path")
        return source if source in BUILTIN_SOURCES else str(_absolute_if_present(Path(source)))

    @field_validator("labels_path")
    @classmethod
    def _absolute_labels(cls, path: Path | None) -> Path | None:
        return None if path is None else _absolute_if_present(path)

    @model_validator(mode="after")
    def _splits_leave_training_rows(self) -> DataConfig:
        if self.validation_split + self.test_split >= 1.0:
            raise ValueError(
                f"validation_split + test_split must be below 1, got {self.validation_split} + {self.test_split}"
            )
        if self.series is not None and self.sequences is not None:
            raise ValueError("series: a source is either a series (data.series) or sequences (data.sequences)")
        if self.text is not None and self.is_series:
            raise ValueError("text: a source holds texts (data.text) or values over time (data.series, data.sequences)")
        if self.text_column is not None and self.text is None:
            raise ValueError("text_column: applies to text sources; add `text: true` to data")
        texts = self.text_column if isinstance(self.text_column, list) else [self.text_column]
        if len(set(map(str, texts))) < len(texts):
            raise ValueError("text_column: a column is listed twice (its texts would be read twice)")
        if self.label_column is not None and str(self.label_column) in map(str, texts):
            raise ValueError("label_column: is also a text column")
        if self.text is not None and self.augment.active:
            raise ValueError("augment: image augmentation does not apply to texts")
        if self.text is not None and self.scaling != "auto":
            raise ValueError("scaling: texts are vectorized (data.text.output), not scaled")
        if self.text is not None and self.labels_path is not None:
            raise ValueError("labels_path: a text source's labels are a column (data.label_column)")
        if self.is_series and self.augment.active:
            raise ValueError("augment: image augmentation does not apply to time series")
        if self.series is not None:
            for key in ("id_column", "labels_path", "classes"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: does not apply to a series source (its samples are windows, not rows)")
        return self


def _absolute_if_present(path: Path) -> Path:
    """`path` made absolute when it names something here; otherwise as given, for the data
    loader's "no such file" message (hostile names included: too long, NUL bytes)."""
    try:
        return path.resolve() if path.exists() else path
    except (OSError, ValueError):
        return path


class SparsityConfig(_Section):
    target: float = Field(0.05, gt=0.0, lt=1.0, description="desired mean activation of each latent unit")
    weight: float = Field(1.0, gt=0.0, description="weight of the KL(target || mean activation) penalty")


class RegularizationConfig(_Section):
    l1: float = Field(0.0, ge=0.0, description="L1 penalty on every kernel")
    l2: float = Field(0.0, ge=0.0, description="L2 penalty on every kernel")
    activity_l1: float = Field(0.0, ge=0.0, description="L1 penalty on the latent code (sparse codes)")
    sparsity: SparsityConfig | None = Field(None, description="KL sparsity penalty; needs latent_activation sigmoid")

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity_shorthand(cls, value: Any) -> Any:
        return _expand_switch(value)


DENSE_ENCODER = (128, 64)  # the encoder's default widths for dense bodies


RECURRENT_ENCODER = (64,)  # the recurrent units of lstm and gru encoders by default
SEQUENCE_ENCODER = (256,)  # the units of a sequence (text) model's encoder layers by default


class ModelConfig(_Section):
    kind: Literal["dense", "conv", "vae", "conv1d", "lstm", "gru", "bow", "sequence"] = Field(
        "dense",
        description="dense, conv (images), vae (variational), for time series conv1d (Conv1D blocks mirrored by "
        "Conv1DTranspose), lstm or gru (recurrent encoder and decoder), for texts bow (a dense autoencoder of "
        "bags of words) or sequence (token sequences to one sentence vector and back)",
    )
    body: Literal["dense", "conv"] = Field("dense", description="vae only: dense or conv layers")
    encoder: list[PositiveInt] = Field(
        default_factory=lambda: list(DENSE_ENCODER),
        description="hidden widths of the encoder, input side first: dense layers (default [128, 64]; none after "
        "conv blocks), or recurrent units for lstm and gru (default [64])",
    )
    latent_dim: PositiveInt = Field(32, description="size of the code")
    widths: Literal["as_given", "from_features"] = Field(
        "as_given",
        description="dense only: from_features sizes the model from the number of input features d instead of "
        "encoder, latent_dim and decoder: one hidden layer of the power of two >= d (8 to 128) each side, and a "
        "code of d/4 (2 to 32; d/2 for d <= 8), so a 6-column table and a 274-column one each get a model of "
        "their size; the run's config.yaml records the widths it resolved to",
    )
    decoder: list[PositiveInt] = Field(
        default_factory=list,
        description="hidden widths of the decoder, dense or recurrent like the encoder's (default: the encoder's, "
        "mirrored)",
    )
    filters: list[PositiveInt] = Field([32, 64], min_length=1, description="conv and conv1d: filters per block")
    kernel_size: PositiveInt = Field(3, description="conv and conv1d: kernel size")
    downsample: Literal["stride", "maxpool"] = Field(
        "stride", description="conv: halve the size per block by stride-2 convolutions or 2x2 max pooling"
    )
    code: Literal["dense", "feature_map"] = Field(
        "dense",
        description="conv and conv1d: the code is a Dense layer of latent_dim units after the blocks (dense), or "
        "the last block's output itself (feature_map, as in the Keras convolutional examples)",
    )
    cell: Literal["gru", "lstm", "transformer"] = Field(
        "gru", description="sequence: the encoder's layers (recurrent, or Transformer blocks of `heads` heads)"
    )
    bidirectional: bool = Field(True, description="sequence with cell gru or lstm: read each sentence both ways")
    pooling: Literal["mean", "max", "cls", "last"] = Field(
        "mean",
        description="sequence: how the encoder's token states become one sentence vector (mean or max over the "
        "tokens, the first token's state, or the last state)",
    )
    embedding_dim: PositiveInt = Field(128, le=4096, description="sequence: size of the word embeddings")
    decoder_cell: Literal["gru", "transformer"] = Field(
        "gru",
        description="sequence: a GRU decoder started from the sentence vector, or Transformer blocks that attend "
        "to it; either sees only that vector and the previous target tokens",
    )
    heads: PositiveInt = Field(4, le=64, description="sequence with a transformer: attention heads per block")
    word_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="sequence: share of the decoder's input tokens replaced by [UNK] while training (Bowman et "
        "al. 2016), so the decoder leans on the sentence vector",
    )
    activation: Activation = "relu"
    latent_activation: Activation = "linear"
    output_activation: OutputActivation = Field(
        "sigmoid", description="default: sigmoid when data is scaled to [0,1] (data.scaling not none), else linear"
    )
    beta: float = Field(1.0, ge=0.0, description="vae and variational sequence models: weight of the KL term")
    variational: bool = Field(
        False,
        description="sequence: a sentence VAE (Bowman et al. 2016): the code is sampled around a learned mean, "
        "and its KL divergence from N(0, I), per token, is added to the loss (weighted by beta)",
    )
    beta_warmup_steps: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="variational sequence models: training steps over which the KL weight rises linearly from 0 to "
        "beta (KL annealing, so the decoder does not learn to ignore the code)",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate after each hidden layer")
    batch_norm: bool = Field(False, description="batch normalization after each hidden layer")
    regularization: RegularizationConfig = Field(default_factory=RegularizationConfig)

    @property
    def uses_conv(self) -> bool:
        """2-D (image) convolutions."""
        return self.kind == "conv" or (self.kind == "vae" and self.body == "conv")

    @property
    def has_blocks(self) -> bool:
        """Convolution blocks, 2-D or 1-D: filters, kernel_size and downsample apply."""
        return self.uses_conv or self.kind == "conv1d"

    @property
    def is_recurrent(self) -> bool:
        return self.kind in ("lstm", "gru")

    def _inapplicable(self) -> dict[str, str]:
        knobs = {}
        if self.kind != "sequence":
            reason = f"applies to model.kind sequence only, not {self.kind!r}"
            knobs.update(dict.fromkeys(SEQUENCE_KNOBS, reason))
        elif self.cell == "transformer":
            knobs["bidirectional"] = "applies to recurrent cells (gru, lstm), not transformer"
        if self.kind != "vae":
            knobs["body"] = f"applies to model.kind vae only, not {self.kind!r}"
            if not (self.kind == "sequence" and self.variational):
                knobs["beta"] = f"applies to model.kind vae and variational sequence models, not {self.kind!r}"
        if self.kind != "sequence" or not self.variational:
            knobs["beta_warmup_steps"] = "applies to variational sequence models (model.variational true) only"
        if not self.has_blocks:
            reason = "applies to conv models only (kind conv or conv1d, or vae with body conv)"
            knobs.update(dict.fromkeys(("filters", "kernel_size", "downsample"), reason))
        if self.kind != "dense":
            knobs["widths"] = f"applies to model.kind dense only, not {self.kind!r}"
        if self.kind not in ("conv", "conv1d"):
            knobs["code"] = f"applies to model.kind conv and conv1d only, not {self.kind!r}"
        elif self.code == "feature_map":
            reason = "does not apply with code feature_map (the last block's output is the code)"
            knobs.update(dict.fromkeys(("latent_dim", "latent_activation", "encoder", "decoder"), reason))
        return knobs

    def sized_for(self, features: int) -> ModelConfig:
        """With widths from_features: this model with its encoder, latent_dim and decoder for
        `features` inputs (and widths as_given, so the saved config rebuilds the same model)."""
        if self.widths != "from_features":
            return self
        hidden = min(max(2 ** math.ceil(math.log2(max(features, 1))), 8), 128)
        code = max(2, features // 2) if features <= 8 else min(max(round(features / 4), 2), 32)
        return self.model_copy(
            update={"encoder": [hidden], "latent_dim": code, "decoder": [hidden], "widths": "as_given"}
        )

    @model_validator(mode="before")
    @classmethod
    def _default_widths(cls, data: Any) -> Any:
        """No dense layers after conv blocks unless asked; the decoder mirrors the encoder."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        kind = data.get("kind")
        given = [key for key in ("encoder", "latent_dim", "decoder") if data.get(key) is not None]
        if data.get("widths") == "from_features" and given:
            raise ValueError(f"{given[0]}: model.widths from_features sizes the model; leave {given[0]} out")
        conv = kind in ("conv", "conv1d") or (kind == "vae" and data.get("body") == "conv")
        if data.get("code") == "feature_map":
            return data  # no dense layers at all
        if data.get("encoder") is None:
            widths = RECURRENT_ENCODER if kind in ("lstm", "gru") else SEQUENCE_ENCODER if kind == "sequence" else None
            data["encoder"] = [] if conv else list(widths or DENSE_ENCODER)
        if data.get("decoder") is None and isinstance(data["encoder"], list):
            data["decoder"] = list(reversed(data["encoder"]))
        return data

    @model_validator(mode="after")
    def _check_family(self) -> ModelConfig:
        regularized_code = self.regularization.sparsity is not None or self.regularization.activity_l1
        if self.code == "feature_map" and regularized_code:
            raise ValueError("regularization: sparsity and activity_l1 act on a dense code, not code feature_map")
        if self.kind == "sequence" and (not self.encoder or not self.decoder):
            raise ValueError("encoder: a sequence model needs at least one layer in encoder and decoder")
        transformer = self.cell == "transformer" or self.decoder_cell == "transformer"
        if self.kind == "sequence" and transformer and self.embedding_dim % self.heads:
            raise ValueError(
                f"embedding_dim: Transformer blocks split {self.embedding_dim} into {self.heads} heads: use a multiple"
            )
        if self.is_recurrent and (not self.encoder or not self.decoder):
            raise ValueError(f"encoder: a {self.kind} model needs at least one recurrent layer in encoder and decoder")
        if self.kind == "vae" and (self.regularization.sparsity is not None or self.regularization.activity_l1):
            raise ValueError("regularization: sparsity and activity_l1 apply to dense and conv codes, not vae")
        if self.regularization.sparsity is not None and self.latent_activation != "sigmoid":
            raise ValueError(
                "regularization.sparsity: needs latent_activation sigmoid (mean activations must lie in (0, 1)), "
                f"got {self.latent_activation!r}"
            )
        return self


SEQUENCE_KNOBS = (
    "cell",
    "bidirectional",
    "pooling",
    "embedding_dim",
    "decoder_cell",
    "heads",
    "word_dropout",
    "variational",
)


def _learning_rate_is_optional(schema: dict[str, Any]) -> None:
    """Left out, the learning rate is the optimizer's default (filled in by validation)."""
    schema.pop("required", None)


class OptimizerConfig(_Section):
    model_config = ConfigDict(json_schema_extra=_learning_rate_is_optional)

    name: OptimizerName = Field("adam", description="gd is full-batch gradient descent: one step per epoch")
    learning_rate: float = Field(gt=0.0, description="default: Keras's default for the optimizer")
    momentum: float | None = Field(None, ge=0.0, lt=1.0)
    beta_1: float | None = Field(None, ge=0.0, lt=1.0)
    beta_2: float | None = Field(None, ge=0.0, lt=1.0)
    epsilon: float | None = Field(None, gt=0.0)
    rho: float | None = Field(None, ge=0.0, lt=1.0)
    amsgrad: bool | None = None
    centered: bool | None = None
    initial_accumulator_value: float | None = Field(None, ge=0.0)
    weight_decay: float | None = Field(None, ge=0.0)
    clipnorm: float | None = Field(None, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _optimizer_defaults(cls, data: Any) -> Any:
        """The knobs this optimizer uses, with their defaults where the YAML leaves them out."""
        if not isinstance(data, dict):
            return data
        name = data.get("name") or "adam"
        defaults = OPTIMIZER_DEFAULTS.get(name) if isinstance(name, str) else None
        return {**(defaults or OPTIMIZER_DEFAULTS["adam"]), **{k: v for k, v in data.items() if v is not None}}

    def _inapplicable(self) -> dict[str, str]:
        allowed = set(OPTIMIZER_DEFAULTS[self.name]) | set(COMMON_OPTIMIZER_KNOBS)
        usable = ", ".join(sorted(allowed))
        reason = f"does not apply to optimizer {self.name!r} (its knobs: {usable})"
        return {knob: reason for knob in type(self).model_fields if knob != "name" and knob not in allowed}


class LossConfig(_Section):
    name: LossName = Field(
        "mse",
        description="mse, bce (binary cross-entropy, needs [0,1] data; for bow: of each word's presence), mae, "
        "huber, or for texts xent (softmax cross-entropy over the vocabulary: the words of a bag, each token of a "
        "sequence); default for bow bce, for sequence xent",
    )
    delta: float = Field(1.0, gt=0.0, description="huber only: where the loss turns linear")

    def _inapplicable(self) -> dict[str, str]:
        return {} if self.name == "huber" else {"delta": f"applies to the huber loss only, not {self.name!r}"}


class EarlyStoppingConfig(_Section):
    patience: PositiveInt = 5
    monitor: Literal["val_loss", "loss"] = "val_loss"
    min_delta: float = Field(0.0, ge=0.0)
    restore_best_weights: bool = True


class CheckpointConfig(_Section):
    best: bool = Field(True, description="keep checkpoints/best.keras (lowest monitored loss)")
    last: bool = Field(
        True,
        description="keep checkpoints/last.keras (the latest finished epoch; written at most every 20x a write's "
        "duration, and always at the end of training or on Ctrl-C)",
    )


class RobustConfig(_Section):
    trim: float = Field(
        0.1,
        gt=0.0,
        lt=0.5,
        description="the fraction of each batch, its highest losses, left out of the loss: rows the model "
        "reconstructs worst are the likeliest anomalies in unlabelled training data",
    )


class NoiseConfig(_Section):
    kind: Literal["gaussian", "salt_pepper", "mask", "word_deletion", "word_mask", "word_swap"] = Field(
        "gaussian",
        description="gaussian: add N(0, amount); salt_pepper: set a fraction to 0 or 1; mask: set to 0; for "
        "sequence models (TSDAE): word_deletion drops, word_mask replaces with [UNK], word_swap swaps with the "
        "next word, each word with probability amount",
    )
    amount: float = Field(
        0.3, gt=0.0, description="standard deviation (gaussian) or fraction (salt_pepper, mask, word_*)"
    )

    @model_validator(mode="after")
    def _amount_in_range(self) -> NoiseConfig:
        if self.kind != "gaussian" and self.amount > 1:
            raise ValueError(f"amount: the {self.kind} fraction must be in (0, 1], got {self.amount}")
        return self


# The knobs of each learning-rate schedule; any other knob is an error.
SCHEDULE_KNOBS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "exponential": ("decay_rate",),
    "cosine": ("alpha", "warmup_epochs"),
    "reduce_on_plateau": ("factor", "patience", "min_lr"),
}


class LRScheduleConfig(_Section):
    kind: Literal["constant", "exponential", "cosine", "reduce_on_plateau"] = "constant"
    decay_rate: float = Field(0.9, gt=0.0, le=1.0, description="exponential: factor per epoch")
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="cosine: final rate as a fraction of the peak")
    warmup_epochs: float = Field(
        0.0,
        ge=0.0,
        le=1_000_000,
        description="cosine: epochs over which the rate rises linearly from 0 to the peak (the optimizer's)",
    )
    factor: float = Field(0.5, gt=0.0, lt=1.0, description="reduce_on_plateau: multiply the rate by this")
    patience: PositiveInt = Field(3, description="reduce_on_plateau: epochs without improvement")
    min_lr: float = Field(0.0, ge=0.0, description="reduce_on_plateau: lower bound")

    def _inapplicable(self) -> dict[str, str]:
        usable = ", ".join(SCHEDULE_KNOBS[self.kind]) or "none"
        reason = f"does not apply to schedule {self.kind!r} (its knobs: {usable})"
        knobs = (knob for knobs in SCHEDULE_KNOBS.values() for knob in knobs)
        return {knob: reason for knob in knobs if knob not in SCHEDULE_KNOBS[self.kind]}


class DistributeConfig(_Section):
    strategy: Literal["none", "mirrored", "multi_worker"] = Field(
        "none",
        description="none: one device; mirrored: tf.distribute.MirroredStrategy over local GPUs (or `devices`); "
        "multi_worker: MultiWorkerMirroredStrategy, cluster from the TF_CONFIG environment variable",
    )
    devices: list[str] | None = Field(
        None, min_length=1, description="mirrored only: devices to mirror over, e.g. [/gpu:0, /gpu:1]; default all GPUs"
    )

    @model_validator(mode="after")
    def _devices_need_mirrored(self) -> DistributeConfig:
        if self.devices is not None and self.strategy != "mirrored":
            raise ValueError(f"devices applies to strategy mirrored only, not {self.strategy!r}")
        return self


class TrainingConfig(_Section):
    epochs: PositiveInt = Field(10, le=1_000_000)
    steps: PositiveInt | None = Field(
        None,
        le=100_000_000,
        description="train for about this many batches whatever the data's size, instead of `epochs`: the epochs "
        "are steps / batches per epoch, rounded (at least 1); the run's config.yaml records the epochs it resolved "
        "to. A detector that trains too long learns its anomalies too: a step budget holds across data sizes",
    )
    batch_size: PositiveInt = Field(32, description="ignored by optimizer gd, which uses the whole training set")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Keras and numpy seeds are 32-bit")
    shuffle: bool = True
    early_stopping: EarlyStoppingConfig | None = Field(None, description="off unless set; `true` = defaults")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tensorboard: bool = Field(False, description="write TensorBoard logs under the run directory")
    noise: NoiseConfig | None = Field(None, description="denoising: corrupt the inputs (fresh each epoch), not targets")
    robust: RobustConfig | None = Field(
        None, description="train on data that holds anomalies: a trimmed loss (off unless set; `true` = defaults)"
    )
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    steps_per_execution: PositiveInt = Field(
        64,
        description="training steps run per compiled call (capped at one epoch): hides per-step framework overhead",
    )
    jit_compile: bool | Literal["auto"] = Field(
        "auto",
        description="compile the training step with XLA; auto: on for dense models on a CPU and on GPUs, off for "
        "convolutional and recurrent models on a CPU (slower under XLA there); the resolved value is recorded in "
        "run.json",
    )
    input_pipeline: Literal["tensor", "arrays", "keras"] = Field(
        "tensor",
        description="tensor: batches gathered inside the compiled training program from a tensor sharing the "
        "arrays' memory (fastest); arrays: gathering with numpy inside tf.data; keras: numpy arrays handed to fit",
    )
    distribute: DistributeConfig = Field(
        default_factory=DistributeConfig, description="tf.distribute: batch_size is the global batch over replicas"
    )
    mixed_precision: bool | Literal["force"] = Field(
        False,
        description="mixed_float16 compute with float32 weights and output (GPU); `force` also allows it on CPU, "
        "where it is slower",
    )

    @field_validator("early_stopping", "noise", "robust", mode="before")
    @classmethod
    def _switch_shorthand(cls, value: Any) -> Any:
        return _expand_switch(value)

    @field_validator("lr_schedule", "distribute", mode="before")
    @classmethod
    def _section_shorthand(cls, value: Any, info: ValidationInfo) -> Any:
        return _expand_shorthand(info.field_name or "", value)

    @model_validator(mode="before")
    @classmethod
    def _steps_or_epochs(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("steps") is not None and data.get("epochs") is not None:
            raise ValueError("steps: training.steps sets the epochs from the data's size; leave epochs out")
        return data

    def for_rows(self, rows: int, full_batch: bool) -> TrainingConfig:
        """With `steps`: this section with the epochs that `rows` training rows need for them."""
        if self.steps is None:
            return self
        per_epoch = 1 if full_batch else max(1, math.ceil(rows / self.batch_size))
        return self.model_copy(update={"epochs": max(1, round(self.steps / per_epoch)), "steps": None})

    @model_validator(mode="after")
    def _warmup_before_the_end(self) -> TrainingConfig:
        if self.lr_schedule.warmup_epochs >= self.epochs:
            raise ValueError(
                f"lr_schedule.warmup_epochs ({self.lr_schedule.warmup_epochs:g}) must be fewer than epochs "
                f"({self.epochs}): the rate would never decay"
            )
        return self


class StreamLikelihoodConfig(_Section):
    """Numenta's anomaly likelihood over a series' per-step scores (causal: uses past steps only)."""

    short: PositiveInt = Field(
        1, le=10_000, description="steps whose scores are averaged before comparing (Numenta averages 10)"
    )
    history: PositiveInt = Field(
        8640, le=10_000_000, description="steps before it whose averages give the usual mean and spread"
    )
    warm_up: PositiveInt = Field(288, description="steps of history needed before any step scores above 0")
    hold_off: NonNegativeInt = Field(
        0,
        le=1_000_000,
        description="a step keeps its likelihood only when above every one of the hold_off steps before it (else "
        "0): one alarm at an episode's onset instead of a run of them; 0: off",
    )

    @model_validator(mode="after")
    def _history_holds_warm_up(self) -> StreamLikelihoodConfig:
        if self.warm_up > self.history:
            raise ValueError(f"warm_up ({self.warm_up}) cannot exceed history ({self.history})")
        return self


class AnomalyConfig(_Section):
    """How reconstruction errors become anomaly flags: recorded in the run, used by `aecli evaluate`
    unless its --score/--threshold say otherwise."""

    score: Literal["mse", "mae", "bce", "dssim", "xent", "knn", "combined"] = Field(
        "mse",
        description="per-sample anomaly score: a reconstruction error (mse, mae, bce for data in [0, 1]; dssim, "
        "images' structural dissimilarity (1 - SSIM) / 2, which weighs shapes over single pixels; xent, the "
        "text models' cross-entropy, is the default for bow and sequence), knn (mean distance from the code to "
        "the `neighbours` nearest training codes) or combined (mse and knn, each standardised on the training "
        "rows, averaged)",
    )
    neighbours: PositiveInt = Field(
        10, le=1000, description="knn and combined: how many nearest training codes a row's distance averages"
    )
    threshold: str = Field(
        AUTO_THRESHOLD,
        description="auto (the default): fpr:0.05 when the run holds validation rows out, else percentile:95; "
        "max (largest training error), percentile:Q or mean_std:K of the training errors, "
        "fpr:F (flags a share F of the held-out normal validation rows), contamination:F (flag that share of "
        "the evaluated data), or a number; best_f1 needs labelled anomalies: set it with aecli threshold",
    )
    points: Literal["mean", "max", "all", "last"] | None = Field(
        None,
        description="series only: a time step's score from the windows covering it: their mean (the default), max, "
        "all (the smallest: a step is flagged only when every window covering it is), or last (causal: the window "
        "that ends at the step, as a live stream must; the first size - 1 steps have no score)",
    )
    likelihood: StreamLikelihoodConfig | None = Field(
        None,
        description="series only: turn each step's score into Numenta's anomaly likelihood, comparable across "
        "series: -log10 of the tail probability of the recent scores given the longer history before them, / 10 "
        "(0.5: a tail of 1e-5); anomaly.threshold is then a number, e.g. 0.5",
    )

    def _inapplicable(self) -> dict[str, str]:
        if self.score in ("knn", "combined"):
            return {}
        return {"neighbours": f"applies to anomaly.score knn and combined, not {self.score!r}"}

    @field_validator("threshold")
    @classmethod
    def _known_threshold(cls, value: str) -> str:
        if value.strip() == AUTO_THRESHOLD:
            return AUTO_THRESHOLD
        try:
            return str(parse_threshold(value, "threshold"))
        except AecliError as exc:
            raise PydanticCustomError("threshold", str(exc).removeprefix("threshold ")) from None


class RuntimeConfig(_Section):
    backend: Literal["tensorflow", "jax", "torch"] = Field(
        "tensorflow", description="Keras backend that trains and runs the model (jax and torch are extras)"
    )


class AecliConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig.model_validate({}))
    loss: LossConfig = Field(default_factory=LossConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def sized_for(self, sample_shape: tuple[int, ...], training_rows: int | None = None) -> AecliConfig:
        """This config with the model sized for samples of `sample_shape` (model.widths) and, when
        `training_rows` is known, the epochs of training.steps resolved."""
        model = self.model.sized_for(math.prod(sample_shape))
        training = self.training
        if training_rows is not None:
            training = training.for_rows(training_rows, self.optimizer.name == "gd")
        if model is self.model and training is self.training:
            return self
        return self.model_copy(update={"model": model, "training": training})

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        return _expand_shorthand("loss", value)

    @model_validator(mode="before")
    @classmethod
    def _defaults_across_sections(cls, data: Any) -> Any:
        """The defaults that depend on another section, filled in before either is validated:
        a text model's loss, anomaly score and vectorizer output; the output activation
        (sigmoid when the data is scaled into [0, 1], linear when data.scaling is none; for bow,
        sigmoid with bce and softmax with xent)."""
        if not isinstance(data, dict):
            return data
        model, section = data.get("model") or {}, data.get("data") or {}
        if not isinstance(model, dict) or not isinstance(section, dict):
            return data
        data = _text_defaults(data, model.get("kind"), section)
        model, section = data.get("model") or {}, data.get("data") or {}
        if model.get("output_activation") is not None:
            return data
        scaling = section.get("scaling")
        series = section.get("series") not in (None, False)
        unscaled = scaling in UNBOUNDED_SCALINGS or (series and scaling in (None, "auto"))
        activation = "linear" if unscaled else "sigmoid"
        if model.get("kind") == "bow":
            activation = "softmax" if _loss_name(data.get("loss")) == "xent" else "sigmoid"
        return {**data, "model": {**model, "output_activation": activation}}

    @model_validator(mode="after")
    def _check_cross_section(self) -> AecliConfig:
        _check_text_sections(self)
        if self.loss.name == "bce" and self.model.output_activation not in ("sigmoid",):
            raise ValueError(
                f"loss.name: bce needs outputs in [0,1], but model.output_activation is "
                f"{self.model.output_activation!r}; use output_activation sigmoid with scaled data, or loss mse"
            )
        if self.model.kind == "vae" and self.loss.name not in ("mse", "bce"):
            raise ValueError(f"loss.name: a vae's reconstruction term is mse or bce, got {self.loss.name!r}")
        if self.training.robust is not None and (self.model.kind == "vae" or self.data.text is not None):
            raise ValueError(
                "training.robust: trims the loss of array, image, table and series models; a vae or a text model "
                "computes its own loss"
            )
        if self.anomaly.points is not None and self.data.series is None:
            raise ValueError("anomaly.points: applies to a series source (data.series) only")
        if self.anomaly.likelihood is not None:
            if self.data.series is None:
                raise ValueError("anomaly.likelihood: applies to a series source (data.series) only")
            spec = auto_threshold(self.anomaly.threshold, self.data.validation_split > 0)
            if spec.kind != "value" or spec.parameter <= 0:
                raise ValueError(
                    "anomaly.likelihood: its scores are likelihoods (0.5: a tail probability of 1e-5), not errors: "
                    f"set anomaly.threshold to a positive number, e.g. 0.5 (got {self.anomaly.threshold})"
                )
        distributed = self.training.distribute.strategy != "none"
        if distributed and self.runtime.backend != "tensorflow":
            raise ValueError(
                f"training.distribute.strategy: {self.training.distribute.strategy} uses tf.distribute, which needs "
                f"runtime.backend tensorflow (got {self.runtime.backend})"
            )
        if self.data.augment.active and self.training.input_pipeline == "keras":
            raise ValueError(
                "data.augment: augmentation runs in the tf.data input pipeline, and training.input_pipeline keras "
                "hands numpy arrays to fit instead; use input_pipeline tensor (the default) or arrays"
            )
        threshold = auto_threshold(self.anomaly.threshold, self.data.validation_split > 0)
        if threshold.kind == "best_f1":
            raise ValueError(
                "anomaly.threshold: best_f1 needs labelled anomalies, which training has not; train with another "
                "threshold, then choose it with aecli threshold RUN --method best_f1 --normal-classes ..."
            )
        if threshold.kind == "fpr" and self.data.validation_split == 0:
            raise ValueError(
                "anomaly.threshold: fpr is measured on the validation rows: needs data.validation_split > 0"
            )
        stopping = self.training.early_stopping
        if stopping is not None and stopping.monitor == "val_loss" and self.data.validation_split == 0:
            raise ValueError(
                "training.early_stopping.monitor: val_loss needs data.validation_split > 0 (or monitor: loss)"
            )
        return self


def _check_text_sections(config: AecliConfig) -> None:
    """Which model kinds, losses, noises and scores go with texts."""
    kind, text, loss = config.model.kind, config.data.text, config.loss.name
    noise = config.training.noise
    if kind in TEXT_KINDS and text is None:
        raise ValueError(f"model.kind: {kind} models texts: set data.text (and data.text_column for a table)")
    if text is not None and kind not in (*TEXT_KINDS, "dense", "vae"):
        raise ValueError(f"model.kind: {kind} does not apply to texts; use bow or sequence (or dense, vae)")
    if text is not None and kind == "vae" and (config.model.body != "dense" or text.output != "multi_hot"):
        raise ValueError("model.kind: a vae of texts needs body dense and data.text.output multi_hot (in [0, 1])")
    if kind == "sequence" and text is not None and text.output != "tokens":
        raise ValueError(f"data.text.output: a sequence model reads tokens, not {text.output}")
    if kind != "sequence" and text is not None and text.output == "tokens":
        raise ValueError(f"data.text.output: tokens are read by model.kind sequence, not {kind}")
    if loss == "xent" and kind not in TEXT_KINDS:
        raise ValueError(f"loss.name: xent is for text models (bow, sequence), not {kind}")
    if kind == "sequence" and loss != "xent":
        raise ValueError(f"loss.name: a sequence model is trained with xent (token cross-entropy), not {loss}")
    if kind == "bow" and loss not in ("bce", "xent"):
        raise ValueError(f"loss.name: a bow model is trained with bce (word presence) or xent (words), not {loss}")
    noise_kind = None if noise is None else noise.kind
    word_noise = noise_kind in WORD_NOISES
    if word_noise and kind != "sequence":
        raise ValueError(f"training.noise.kind: {noise_kind} corrupts token sequences (model.kind sequence)")
    if kind == "sequence" and noise_kind is not None and not word_noise:
        raise ValueError(f"training.noise.kind: a sequence model takes {', '.join(WORD_NOISES)}, not {noise_kind}")
    if text is not None and kind != "sequence" and noise is not None:
        raise ValueError("training.noise: bag-of-words inputs are not corrupted; use model.kind sequence for TSDAE")
    score = config.anomaly.score
    if score == "xent" and kind not in TEXT_KINDS:
        raise ValueError(f"anomaly.score: xent is for text models (bow, sequence), not {kind}")
    if kind == "sequence" and score != "xent":
        raise ValueError(f"anomaly.score: a sequence model's per-sample error is xent, not {score}")
    if text is not None and score in ("knn", "combined", "dssim"):
        raise ValueError(f"anomaly.score: {score} is for arrays, images, tables and series; a text model's is xent")


def _loss_name(loss: Any) -> Any:
    return loss.get("name") if isinstance(loss, dict) else loss


def _text_defaults(data: dict[str, Any], kind: Any, section: dict[str, Any]) -> dict[str, Any]:
    """For bow and sequence models: loss bce (bow) or xent (sequence), anomaly score xent, and
    token outputs for a sequence model."""
    if kind not in TEXT_KINDS:
        return data
    data = dict(data)
    if _loss_name(data.get("loss")) is None:
        given = data.get("loss")
        loss: dict[str, Any] = given if isinstance(given, dict) else {}
        data["loss"] = {**loss, "name": "xent" if kind == "sequence" else "bce"}
    anomaly = data.get("anomaly")
    if anomaly is None or (isinstance(anomaly, dict) and anomaly.get("score") is None):
        data["anomaly"] = {**(anomaly or {}), "score": "xent"}
    text = section.get("text")
    if kind == "sequence" and (text is True or (isinstance(text, dict) and text.get("output") is None)):
        text = {} if text is True else text
        data["data"] = {**section, "text": {**text, "output": "tokens"}}
    return data


# Sections that may be written as one string: `loss: bce` means `loss: {name: bce}`.
SHORTHAND_KEYS = {"loss": "name", "lr_schedule": "kind", "distribute": "strategy"}


def _expand_shorthand(section: str, value: Any) -> Any:
    return {SHORTHAND_KEYS[section]: value} if isinstance(value, str) else value


def _expand_switch(value: Any) -> Any:
    """`true` turns an optional section on with its defaults, `false` turns it off."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


def load_config(path: Path | str | None, overrides: Sequence[str] = ()) -> AecliConfig:
    """Read a YAML file (or start from the defaults when `path` is None), apply `--set` overrides, validate."""
    return build_config(path, overrides)


def build_config(
    path: Path | str | None = None,
    overrides: Sequence[str] = (),
    base: dict[str, Any] | None = None,
    allowed: Sequence[str] | None = None,
    command: str = "this command",
    hint: str = "",
) -> AecliConfig:
    """The one way every command makes its config: a YAML file, or `base` (a mapping built from
    the command's options), then `--set` overrides (only keys under `allowed` when given), then
    one validation pass whose every message goes through the same formatter."""
    raw: dict[str, Any] = read_yaml_mapping(Path(path)) if path is not None else copy.deepcopy(base or {})
    for override in overrides:
        key = override.partition("=")[0].strip()
        if allowed is not None and not any(_within(key, prefix) for prefix in allowed):
            keys = ", ".join(
                prefix.replace(".*", ".KEY") if "." in prefix else f"{prefix}.KEY=VALUE" for prefix in allowed
            )
            raise ConfigError(f"--set {shorten(override)}: {command} takes {keys} overrides only{hint}")
        apply_override(raw, override)
    return validate_config(raw)


def _within(key: str, allowed: str) -> bool:
    """`allowed` is a dotted key (data.limit: that key only), a dotted section (data.series.*: it
    or any key in it), or a top-level section (data: any key in it)."""
    if allowed.endswith(".*"):
        return key == allowed[:-2] or key.startswith(allowed[:-1])
    return key == allowed if "." in allowed else key.startswith(f"{allowed}.")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise ConfigError(f"config path is {kind}, expected a YAML file: {path}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {clip(str(exc))}") from None
    raw = load_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"config file is empty: {path} (write `{{}}` to use every default)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file must hold a mapping of sections, got a {type(raw).__name__}: {path}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` override in place; the value is parsed as a YAML scalar or list."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override {shorten(override)}: expected KEY=VALUE with a dotted key, e.g. optimizer.name=sgd"
        )
    if not text.strip():
        raise ConfigError(
            f"override {shorten(override)}: no value after '='; give one (null resets the key to its default)"
        )
    value = load_yaml(text, f"override {shorten(override)}")
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part in SHORTHAND_KEYS:
            child = node[part] = _expand_shorthand(part, child)
        elif isinstance(child, bool):
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError(f"override {shorten(override)}: {where} is {shorten(child)}, not a section")
        node = child
    node[leaf] = value


def validate_config(raw: dict[str, Any]) -> AecliConfig:
    try:
        return AecliConfig.model_validate(raw)
    except ValidationError as exc:
        by_path: dict[str, list[Any]] = {}
        for err in exc.errors():
            by_path.setdefault(_error_path(err), []).append(err)
        described = [_describe_errors(path, errs) for path, errs in list(by_path.items())[:MAX_REPORTED_ERRORS]]
        more = len(by_path) - len(described)
        raise ConfigError("; ".join(described) + (f"; and {more} more" if more > 0 else "")) from None


MAX_REPORTED_ERRORS = 3  # one line stays readable; fixing these reveals the rest


def _error_path(err: Any) -> str:
    # pydantic names the union member that failed ("int", "list[int]"); users think in keys only.
    return clip(".".join(str(part) for part in err["loc"] if not _is_union_tag(part)), 120)


def _describe_errors(path: str, errs: list[Any]) -> str:
    if len(errs) > 1 and all(err["msg"].startswith("Input should be ") for err in errs):
        expected = " or ".join(err["msg"].removeprefix("Input should be ") for err in errs)
        return f"{path}: input should be {expected}, got {shorten(errs[0]['input'])}"
    return _describe_error(path, errs[0])


def _describe_error(path: str, err: Any) -> str:
    loc = path.split(".")
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"valid keys: {', '.join(valid)}"
        return f"{path}: unknown key; {hint}"
    if err["type"] == "value_error":
        message = str(err["ctx"]["error"])
        return f"{path}.{message}" if path else message
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path}: expected a mapping of keys, got {shorten(err['input'])}"
    return f"{path}: {err['msg'][0].lower()}{err['msg'][1:]}, got {shorten(err['input'])}"


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or "-" in part)


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] = AecliConfig
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        nested = [arg for arg in getattr(annotation, "__args__", (annotation,)) if isinstance(arg, type)]
        sections = [arg for arg in nested if issubclass(arg, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def dump_config(config: AecliConfig) -> dict[str, Any]:
    """The resolved config as plain data: every default filled in, knobs that do not apply left out."""
    return config.model_dump(mode="json", exclude_none=True)


class _ConfigDumper(yaml.SafeDumper):
    """Block-style sections with short lists kept on one line: `encoder: [128, 64]`; strings that
    the loader would read as numbers or booleans (`1e39`) are quoted, so a saved config reloads
    to the same values."""


_ConfigDumper.yaml_implicit_resolvers = CORE_RESOLVERS


_ConfigDumper.add_representer(
    list, lambda dumper, items: dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=True)
)


def config_to_yaml(config: AecliConfig) -> str:
    return yaml.dump(dump_config(config), Dumper=_ConfigDumper, sort_keys=False)


def config_json_schema() -> dict[str, Any]:
    return AecliConfig.model_json_schema()
