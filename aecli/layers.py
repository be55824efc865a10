"""aecli's custom Keras objects, registered so saved models load back with `keras.saving.load_model`.

Importing this module registers them (it imports Keras, so the CLI loads it only when a
model is built or loaded). Written with `keras.ops`/`keras.random` only.

VAE loss convention: per sample, the reconstruction term is *summed* over all features
(pixels) and the KL term is summed over latent dimensions; both are then averaged over
the batch: loss = reconstruction + beta * KL (the negative ELBO when beta = 1).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from aecli.backend import import_tensorflow
from aecli.noise import corrupt_tensor, parse_noise

_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="aecli")
class Sampling(keras.layers.Layer):
    """The reparameterisation trick: z = z_mean + exp(z_log_var / 2) * epsilon, epsilon ~ N(0, I)."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: list[Any]) -> Any:
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(
            ops.shape(z_mean), dtype=keras.backend.standardize_dtype(z_mean.dtype), seed=self.seed_generator
        )
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def compute_output_shape(self, input_shape: list[tuple[int, ...]]) -> tuple[int, ...]:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="aecli")
class KLSparsity(keras.regularizers.Regularizer):
    """Sparse codes: weight * sum_j KL(target || mean activation of unit j over the batch), plus an
    optional L1 term on the activations. Needs activations in (0, 1) (a sigmoid code)."""

    def __init__(self, target: float = 0.05, weight: float = 1.0, l1: float = 0.0) -> None:
        self.target, self.weight, self.l1 = float(target), float(weight), float(l1)

    def __call__(self, activations: Any) -> Any:
        rho = self.target
        rho_hat = ops.clip(ops.mean(activations, axis=0), _EPSILON, 1 - _EPSILON)
        divergence = rho * ops.log(rho / rho_hat) + (1 - rho) * ops.log((1 - rho) / (1 - rho_hat))
        penalty = self.weight * ops.sum(divergence)
        if self.l1:
            penalty = penalty + self.l1 * ops.sum(ops.abs(activations))
        return penalty

    def get_config(self) -> dict[str, Any]:
        return {"target": self.target, "weight": self.weight, "l1": self.l1}


@keras.saving.register_keras_serializable(package="aecli")
class VariationalAutoencoder(keras.Model):
    """A VAE around an encoder (-> z_mean, z_log_var, z) and a decoder.

    Training decodes the sampled z; inference decodes z_mean, so reconstructions are
    deterministic. `reconstruction_loss` and `kl_loss` are reported next to `loss`.
    """

    def __init__(
        self,
        encoder: keras.Model,
        decoder: keras.Model,
        beta: float = 1.0,
        reconstruction: str = "mse",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reconstruction not in ("mse", "bce"):
            raise ValueError(f"reconstruction must be 'mse' or 'bce'. Received: reconstruction={reconstruction}")
        self.encoder, self.decoder = encoder, decoder
        self.beta, self.reconstruction = float(beta), reconstruction
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    def call(self, inputs: Any, training: bool = False) -> Any:
        z_mean, z_log_var, z = self.encoder(inputs, training=training)
        kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)
        # Read back by compute_loss in the same (traced) step; bypasses Keras's attribute tracking.
        object.__setattr__(self, "_batch_kl", ops.mean(kl))
        return self.decoder(z if training else z_mean, training=training)

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> Any:
        flat_true = ops.reshape(y, (ops.shape(y)[0], -1))
        flat_pred = ops.reshape(y_pred, (ops.shape(y_pred)[0], -1))
        if self.reconstruction == "bce":
            per_feature = ops.binary_crossentropy(flat_true, ops.clip(flat_pred, _EPSILON, 1 - _EPSILON))
        else:
            per_feature = ops.square(flat_true - flat_pred)
        reconstruction = ops.mean(ops.sum(per_feature, axis=1))
        kl = self._batch_kl
        # Weighted by batch size, as Keras weights its `loss` tracker: with a partial last batch
        # the epoch's loss stays reconstruction_loss + beta * kl_loss.
        batch = ops.cast(ops.shape(y)[0], "float32")
        self.reconstruction_tracker.update_state(reconstruction, sample_weight=batch)
        self.kl_tracker.update_state(kl, sample_weight=batch)
        total = reconstruction + self.beta * kl
        if self.losses:  # kernel / activity regularizers of the encoder and decoder
            total = total + ops.sum(self.losses)
        return total

    @property
    def metrics(self) -> list[Any]:
        return [*super().metrics, self.reconstruction_tracker, self.kl_tracker]

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "beta": self.beta,
            "reconstruction": self.reconstruction,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VariationalAutoencoder:
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder, decoder, **config)


@keras.saving.register_keras_serializable(package="aecli")
class MultiWorkerTrainer(keras.Model):
    """Trains a wrapped autoencoder under MultiWorkerMirroredStrategy, around two Keras 3 bugs
    in `fit` with that strategy (keras-team/keras#20585):

    - fit reduces the first batch across workers (to build the model from it) and fails when
      the batch is a (x, y) tuple, so batches are the inputs alone and the target is the input
      (the model is now built from zeros of its input shape instead, see _maybe_symbolic_build,
      but datasets keep the inputs-only form that needs);
    - fit reduces every logged metric "along axis 0", which scalars lack, so the steps log
      them with shape (1,); the reduced result is the scalar mean over workers.

    Denoising (`noise`, e.g. "gaussian:0.2") corrupts each batch here, as the batches carry no
    targets: with TensorFlow's stateless draws seeded by `noise_seed`, the replica's id (every
    worker draws its own noise) and the training step (fresh every step); a validation batch's
    noise is seeded by its content, so it is the same in every epoch and val_loss compares.

    Only checkpoints hold this wrapper; the run's model.keras is the autoencoder itself.
    """

    def __init__(
        self,
        autoencoder: keras.Model,
        shaped_logs: bool = True,
        noise: str | None = None,
        noise_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.autoencoder = autoencoder
        # Keras reduces "along axis 0" only in a cluster of several workers; alone, it keeps scalars.
        self.shaped_logs = shaped_logs
        self.noise, self.noise_seed = noise, noise_seed
        self._symbolically_built = False

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.autoencoder(inputs, training=training)

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> Any:
        y = x if y is None else y
        if isinstance(self.autoencoder, VariationalAutoencoder):
            return self.autoencoder.compute_loss(x, y, y_pred, sample_weight, training)
        return super().compute_loss(x, y, y_pred, sample_weight, training)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Keras builds the model from a first batch at the start of every fit and evaluate: a
        batch read (and reduced across workers) only for its shape and thrown away, which on a
        shard share costs a pass over the worker's files (a shuffled stream yields nothing
        before its buffer is full). The shape is the autoencoder's input: built from zeros of
        it, once, on every worker alike."""
        if not self._symbolically_built:
            inner = self.autoencoder
            shape = tuple((inner.encoder if isinstance(inner, VariationalAutoencoder) else inner).input_shape[1:])
            super()._maybe_symbolic_build(data_batch=ops.zeros((1, *shape), dtype="float32"))
            self._symbolically_built = True

    def train_step(self, data: Any) -> Any:
        return self._shaped(super().train_step(self._with_noise(data, training=True)))

    def test_step(self, data: Any) -> Any:
        return self._shaped(super().test_step(self._with_noise(data, training=False)))

    def _with_noise(self, clean: Any, training: bool) -> Any:
        """(corrupted, clean) for denoising, else the batch as it came (its own target)."""
        if self.noise is None:
            return clean
        tf = import_tensorflow()
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        if training:
            draw = tf.cast(self.optimizer.iterations, tf.int64)
        else:  # the batch's own bits: the same noise for the same batch, epoch after epoch
            draw = tf.cast(tf.bitcast(tf.reduce_sum(tf.cast(clean, tf.float32)), tf.int32), tf.int64)
        stream = tf.constant(self.noise_seed * 2 + (0 if training else 1), tf.int64) * 1_000_003 + replica
        return corrupt_tensor(clean, parse_noise(self.noise, "training.noise"), tf.stack([stream, draw])), clean

    def _shaped(self, logs: dict[str, Any]) -> dict[str, Any]:
        return {name: ops.reshape(value, (1,)) for name, value in logs.items()} if self.shaped_logs else logs

    @property
    def metrics(self) -> list[Any]:
        inner = self.autoencoder
        extra = [inner.reconstruction_tracker, inner.kl_tracker] if isinstance(inner, VariationalAutoencoder) else []
        return [*super().metrics, *extra]

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "autoencoder": keras.saving.serialize_keras_object(self.autoencoder),
            "shaped_logs": self.shaped_logs,
            "noise": self.noise,
            "noise_seed": self.noise_seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MultiWorkerTrainer:
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("autoencoder")), **config)


def custom_objects() -> dict[str, Any]:
    """For `keras.saving.load_model(path, custom_objects=aecli.layers.custom_objects())`."""
    from aecli import text_layers

    return {
        **text_layers.custom_objects(),
        "Sampling": Sampling,
        "KLSparsity": KLSparsity,
        "VariationalAutoencoder": VariationalAutoencoder,
        "MultiWorkerTrainer": MultiWorkerTrainer,
    }
