"""Input feeds: everything that turns training data into what `fit` consumes.

Side by side, because they share one guarantee: every feed of in-memory arrays walks an epoch
in `epoch_order` (a seeded shuffle drawn afresh each epoch), whether batches are gathered by
tf.data (`reconstruction_pipeline`) or inside the compiled program (`step_blocks`, consumed by
execution.fused_train_function; one iterator serves the whole fit, so its epochs after the
first are shuffled in another order than a new iterator's); shard folders stream through
`Stream`, reshuffled per epoch. Augmentation (augment.py) changes training batches in tf.data.
Imports Keras at module level: only the training code (training.py, commands/train.py) imports this.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from aecli.augment import Augment
from aecli.backend import import_tensorflow
from aecli.data import TrainingData
from aecli.data.scaling import TENSOR_ALIGNMENT, aligned_empty
from aecli.data.shards import BLOCK_ROWS, SHUFFLE_BUFFER_BYTES, ShardedData
from aecli.data.text_stream import StreamedTexts
from aecli.noise import NoiseSpec, corrupt, corrupt_tensor

PIPELINE_THREADS = 2  # gathering a batch is a memory copy: two threads keep ahead of training
PIPELINE_PREFETCH = 4  # batches ready ahead of the training step
VALIDATION_BATCH_SIZE = 1024  # validation only runs forward passes: larger batches, same mean loss
NOISE_STREAM = 7919  # tf.data noise draws use seed + this, apart from augmentation's draws


def reconstruction_pipeline(
    inputs: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    kind: str = "tensor",
    inputs_only: bool = False,
    augment: Augment | None = None,
) -> Any:
    """A tf.data pipeline over in-memory arrays: shuffled row indices (reshuffled every epoch,
    seeded), batched, gathered, and prefetched.

    Feeding numpy arrays to `fit` rebuilds Keras's data adapter every epoch, which on small data
    sets costs more than the training itself; shuffling indices instead of rows keeps the
    per-epoch work small. kind "tensor" gathers with tf.gather from a tensor sharing the arrays'
    memory (fastest); "arrays" gathers with numpy through tf.numpy_function (slower).
    `inputs_only` leaves the targets out (see layers.MultiWorkerTrainer). With `augment`, each
    batch is augmented and is its own target.
    """
    tf = import_tensorflow()
    shape = (None, *inputs.shape[1:])

    def from_arrays(rows: Any) -> tuple[Any, Any]:
        def take(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return inputs[index], targets[index]

        batch_in, batch_out = tf.numpy_function(take, [rows], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(batch_in, shape), tf.ensure_shape(batch_out, shape)

    if kind == "arrays":
        gather = from_arrays
    else:
        x = tensor_view(inputs)
        y = x if targets is inputs else tensor_view(targets)

        def gather(rows: Any) -> tuple[Any, Any]:
            return tf.gather(x, rows), tf.gather(y, rows)

    batches = (
        epoch_order(len(inputs), shuffle, seed)
        .batch(batch_size)
        .map(gather, num_parallel_calls=PIPELINE_THREADS, deterministic=True)
    )
    if augment is not None:
        batches = augmented_pairs(batches, augment, seed)
    if inputs_only:
        batches = batches.map(lambda batch_in, batch_out: batch_in)
    return with_data_sharding(untuned(batches.prefetch(PIPELINE_PREFETCH)))


def augmented_pairs(batches: Any, augment: Augment, seed: int) -> Any:
    """(input, target) batches -> (augmented input, the same as target), drawn from `seed` and
    tf.data's seeded random stream (different every epoch, the same on a rerun)."""
    return _with_draws(batches, seed).map(lambda pair, draw: _twice(augment(pair[0], draw)))


def _twice(batch: Any) -> tuple[Any, Any]:
    return batch, batch


def with_tensor_noise(batches: Any, noise: NoiseSpec, seed: int) -> Any:
    """(clean, clean) batches -> (corrupted, clean), the noise drawn by TensorFlow's stateless ops
    as in the fused training program, from tf.data's seeded random stream (a stream apart from
    the augmentation's, which `seed` itself drives)."""
    draws = _with_draws(batches, seed + NOISE_STREAM)
    return draws.map(lambda pair, draw: (corrupt_tensor(pair[1], noise, draw), pair[1]))


def _with_draws(batches: Any, seed: int) -> Any:
    """Each batch paired with a stateless seed: (`seed`, a number drawn afresh every epoch)."""
    tf = import_tensorflow()
    numbers = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    draws = numbers.map(lambda number: tf.stack([tf.constant(seed, tf.int64), number]))
    return tf.data.Dataset.zip(batches, draws)


def epoch_order(rows: int, shuffle: bool, seed: int) -> Any:
    """Row indices in training order: a seeded shuffle, drawn afresh every epoch."""
    tf = import_tensorflow()
    order = tf.data.Dataset.range(rows)
    return order.shuffle(rows, seed=seed, reshuffle_each_iteration=True) if shuffle else order


def untuned(dataset: Any) -> Any:
    """Fixed settings instead of tf.data's tuning: its default graph rewrites serialize the
    pipeline with any captured array in it (a second copy of the data in memory), and its
    autotuner, competing with training for the cores, made one epoch in three ~60% slower."""
    tf = import_tensorflow()
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return dataset.with_options(options)


def tensor_view(array: np.ndarray) -> Any:
    """A TensorFlow tensor over the array's own memory (DLPack: no copy). TensorFlow requires
    64-byte aligned buffers, which aecli's scaled arrays are (data.aligned_empty); any other
    array is copied once into an aligned buffer. `tf.constant` would cost two copies."""
    tf = import_tensorflow()
    if array.ctypes.data % TENSOR_ALIGNMENT or not array.flags.c_contiguous or not array.flags.writeable:
        aligned = aligned_empty(array.shape, array.dtype)
        aligned[...] = array
        array = aligned
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def with_data_sharding(dataset: Any) -> Any:
    """Under a multi-worker strategy, each worker takes every n-th batch: in-memory data has no
    files to split between workers (TensorFlow's default policy would try, and warn)."""
    tf = import_tensorflow()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def step_blocks(
    rows: int,
    batch_size: int,
    block_steps: int,
    shuffle: bool,
    seed: int,
    samples: Any = None,
    augment: Augment | None = None,
) -> Any:
    """One epoch of training batches as row-index blocks for `fused_train_function`.

    The epoch's order is `epoch_order`, as in `reconstruction_pipeline`, cut into batches; full
    batches come `block_steps` at a time as ([block_steps, batch_size] indices, number of real
    steps), the last block padded, so that one compiled program serves them all; a final short
    batch comes alone, as ([1, rest], 1).

    With `augment`, a block holds the augmented batches themselves ([steps, batch_size, *sample
    shape], gathered from the tensor `samples`, one augmentation call per block) instead of row
    indices. Inside the compiled block, XLA's CPU code for the resampling's gathers ran at a
    quarter of the speed it reaches alone; here it also overlaps the training of the block before.
    """
    tf = import_tensorflow()
    full, rest = divmod(rows, batch_size)

    def blocks(order: Any) -> Any:
        order = tf.cast(order, tf.int32)
        batches = tf.reshape(order[: full * batch_size], (full, batch_size))

        def padded(block: Any) -> tuple[Any, Any]:
            steps = tf.shape(block)[0]
            block = tf.pad(block, [[0, block_steps - steps], [0, 0]])
            return tf.ensure_shape(block, (block_steps, batch_size)), steps

        fulls = tf.data.Dataset.from_tensor_slices(batches).batch(block_steps).map(padded)
        if not rest:
            return fulls
        return fulls.concatenate(tf.data.Dataset.from_tensors((order[None, full * batch_size :], 1)))

    count = math.ceil(full / block_steps) + (1 if rest else 0)
    epochs = epoch_order(rows, shuffle, seed).batch(rows).flat_map(blocks)
    if augment is not None:

        def augmented(block_and_steps: tuple[Any, Any], draw: Any) -> tuple[Any, Any]:
            block, steps = block_and_steps
            gathered = tf.gather(samples, block)
            images = augment(tf.reshape(gathered, (-1, *samples.shape[1:])), draw)
            return tf.reshape(images, tf.shape(gathered)), steps

        epochs = _with_draws(epochs, seed).map(augmented)
    return untuned(epochs.apply(tf.data.experimental.assert_cardinality(count)).prefetch(2))


def steps_after_block(rows: int, batch_size: int, block_steps: int) -> Callable[[int], int]:
    """How many training steps an epoch has taken after its `step_blocks` block number `block`."""
    full = rows // batch_size
    full_blocks = math.ceil(full / block_steps)
    steps = math.ceil(rows / batch_size)
    return lambda block: min((block + 1) * block_steps, full) if block < full_blocks else steps


class NoisyBatches(keras.utils.PyDataset):
    """Denoising input: (corrupted batch, clean batch), with fresh noise and order every epoch."""

    def __init__(self, x: np.ndarray, batch_size: int, noise: NoiseSpec, seed: int, shuffle: bool) -> None:
        super().__init__()
        self.x, self.batch_size, self.shuffle = x, batch_size, shuffle
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        clean = self.x[self.order[index * self.batch_size : (index + 1) * self.batch_size]]
        return corrupt(clean, self.noise, self.rng), clean

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))


@dataclass(frozen=True)
class FeedOptions:
    """How training batches are drawn; `block_steps` > 0 means index blocks for the fused train
    function (see execution.py), and `inputs_only` leaves the targets out (layers.MultiWorkerTrainer)."""

    batch_size: int
    shuffle: bool
    seed: int
    pipeline: str  # training.input_pipeline: tensor | arrays | keras
    inputs_only: bool = False
    noise: NoiseSpec | None = None
    block_steps: int = 0
    augment: Augment | None = None
    fused_validation: bool = False  # in-memory validation evaluated by execution.fused_test_function


@dataclass(frozen=True)
class InMemoryValidation:
    """Validation arrays that execution.fused_test_function evaluates itself, once per epoch; fit
    gets an endless one-element placeholder and one validation step, so that Keras keeps a single
    iterator for the whole fit instead of making one per epoch."""

    inputs: np.ndarray  # noisy for denoising: drawn once, so val_loss compares across epochs
    targets: np.ndarray

    def placeholder(self) -> Any:
        tf = import_tensorflow()
        one = np.zeros((1, *self.inputs.shape[1:]), np.float32)
        return tf.data.Dataset.from_tensors((one, one)).repeat()


@dataclass(frozen=True)
class Feeds:
    """What `fit` consumes: a tf.data pipeline or PyDataset, or (with input_pipeline keras) the
    arrays themselves as an (x, y) pair, plus the validation data in the same form."""

    train: Any
    validation: Any
    options: FeedOptions
    steps_per_epoch: int | None = None  # set for an endless `train` dataset

    def fit_arguments(self) -> dict[str, Any]:
        if isinstance(self.train, tuple):  # let fit slice the arrays itself
            x, y = self.train
            batching = {"batch_size": self.options.batch_size, "shuffle": self.options.shuffle}
            return {"x": x, "y": y, **batching, "validation_data": self.validation}
        epoch = {} if self.steps_per_epoch is None else {"steps_per_epoch": self.steps_per_epoch}
        if isinstance(self.validation, InMemoryValidation):
            validation = {"validation_data": self.validation.placeholder(), "validation_steps": 1}
        else:
            validation = {"validation_data": self.validation}
        return {"x": self.train, "shuffle": False, **validation, **epoch}


def fit_inputs(data: TrainingData) -> tuple[np.ndarray | Stream, np.ndarray | Stream | None]:
    """The training and validation inputs of `fit_autoencoder`: arrays, or streams of a shard
    folder or a text file."""
    if isinstance(data, ShardedData | StreamedTexts):
        return Stream(data, "train"), Stream(data, "validation") if data.counts["validation"] else None
    return data.x_train, data.x_val


def make_feeds(train: np.ndarray | Stream, validation: np.ndarray | Stream | None, options: FeedOptions) -> Feeds:
    if isinstance(train, Stream) and train.data.share is not None:
        return _worker_feeds(train, validation, options)
    if isinstance(train, Stream):
        inputs_only, noise = options.inputs_only, options.noise
        val = None
        if isinstance(validation, Stream):
            val = validation.dataset(VALIDATION_BATCH_SIZE, False, options.seed + 1, inputs_only, noise, True)
        batches = train.dataset(
            options.batch_size, options.shuffle, options.seed, inputs_only, noise, augment=options.augment
        )
        return Feeds(batches, val, options)
    return _array_feeds(train, validation if isinstance(validation, np.ndarray) else None, options)


def _worker_feeds(train: Stream, validation: np.ndarray | Stream | None, options: FeedOptions) -> Feeds:
    """One worker's feeds over its own shard files (see data.sharing): every worker must take
    the same number of steps (each step is a collective), so the training rows repeat and an
    epoch is the global row count's worth of global batches; validation is a fixed number of
    batches per worker, the largest share's, a smaller share cycling through its rows again."""
    assert isinstance(train.data, ShardedData)  # a text file is read whole by every worker
    share = train.data.share
    assert share is not None
    local, shuffle, seed, augment = (
        share.local_batch(options.batch_size),
        options.shuffle,
        options.seed,
        options.augment,
    )
    batches = share.distribute(lambda: train.worker_dataset(local, shuffle, seed, augment=augment))
    steps = math.ceil(train.rows / options.batch_size)
    val = None
    if isinstance(validation, Stream):
        # As few batches as the largest share needs, no larger than they must be: a pass over the
        # validation rows reads every file of the share (the rows are spread over all of them).
        largest = max(train.data.worker_counts["validation"])
        val_steps = math.ceil(largest / share.local_batch(VALIDATION_BATCH_SIZE))
        val_local = math.ceil(largest / val_steps)
        val = share.distribute(lambda: validation.worker_dataset(val_local, False, seed, val_steps))
    return Feeds(batches, val, options, steps)


def _array_feeds(x_train: np.ndarray, x_val: np.ndarray | None, options: FeedOptions) -> Feeds:
    """Index blocks for the fused train function, a tf.data pipeline, noisy batches, or the arrays,
    and the validation data (with noise: fixed noisy inputs, so val_loss compares across epochs)."""
    seed, noise = options.seed, options.noise
    train_data, steps_per_epoch = _array_training_feed(x_train, options)
    x_val_input = x_val
    if noise is not None and x_val is not None:
        x_val_input = corrupt(x_val, noise, np.random.default_rng(seed + 1))
    if x_val is None or x_val_input is None:
        return Feeds(train_data, None, options, steps_per_epoch)
    if options.pipeline == "keras":
        return Feeds(train_data, (x_val_input, x_val), options, steps_per_epoch)
    if options.fused_validation:
        return Feeds(train_data, InMemoryValidation(x_val_input, x_val), options, steps_per_epoch)
    validation = reconstruction_pipeline(
        x_val_input, x_val, VALIDATION_BATCH_SIZE, False, seed, options.pipeline, options.inputs_only
    )
    return Feeds(train_data, validation, options, steps_per_epoch)


def _array_training_feed(x_train: np.ndarray, options: FeedOptions) -> tuple[Any, int | None]:
    """What fit trains on, and its steps per epoch when it is an endless tf.data pipeline.

    Noise: the fused blocks draw it inside the compiled program; augmented batches get theirs in
    tf.data after the augmentation; otherwise numpy draws it per batch (NoisyBatches). The fused
    blocks repeat for the whole fit (Keras keeps one iterator when told the steps per epoch): a
    new iterator every epoch cost ~0.04 s of setup, ~0.1 s more with augmentation (its compiled
    function is instantiated per iterator), a third of an epoch on a few thousand rows. (Their
    epochs after the first are shuffled in another order than a new iterator's would be.)
    """
    seed, noise, augment = options.seed, options.noise, options.augment
    if options.block_steps:
        samples = None if augment is None else tensor_view(x_train)
        pipeline = step_blocks(
            len(x_train), options.batch_size, options.block_steps, options.shuffle, seed, samples, augment
        )
    elif noise is not None and augment is None:
        return NoisyBatches(x_train, options.batch_size, noise, seed, options.shuffle), None
    elif options.pipeline == "keras":
        return (x_train, x_train), None
    else:
        pipeline = reconstruction_pipeline(
            x_train, x_train, options.batch_size, options.shuffle, seed, options.pipeline, options.inputs_only, augment
        )
        # Not endless: Keras's multi-step loop would run whole calls of steps_per_execution steps
        # past the epoch's end; on a finite dataset the last call stops where the data does.
        return pipeline if noise is None else with_tensor_noise(pipeline, noise, seed), None
    return pipeline.repeat(), int(pipeline.cardinality())


@dataclass
class Stream:
    """One part of a shard folder or a streamed text file as `fit` consumes it: a row count and a
    tf.data pipeline."""

    data: ShardedData | StreamedTexts
    part: str

    @property
    def rows(self) -> int:
        return self.data.counts[self.part]

    def dataset(
        self,
        batch_size: int,
        shuffle: bool,
        seed: int,
        inputs_only: bool = False,
        noise: NoiseSpec | None = None,
        fixed_noise: bool = False,
        augment: Augment | None = None,
    ) -> Any:
        """Batches of scaled rows: (inputs, targets), or inputs alone; reshuffled every epoch
        (block order, rows within blocks, and a bounded buffer across blocks), memory bounded by
        the buffer and the prefetched batches, not by the data set.

        With noise (denoising), inputs are corrupted copies of the targets: fresh noise every
        batch, or with `fixed_noise` the same noise for a batch in every epoch (validation).
        With `augment`, the scaled batches are augmented first (and are their own targets)."""
        tf = import_tensorflow()
        rows = self._rows(shuffle, seed)
        batches = rows.batch(batch_size).map(self._scaler(), num_parallel_calls=tf.data.AUTOTUNE)
        batches = batches.apply(tf.data.experimental.assert_cardinality(math.ceil(self.rows / batch_size)))
        if augment is not None:
            batches = _with_draws(batches, seed).map(augment)
        if noise is not None:
            batches = _with_noise(batches, noise, seed, fixed_noise)
        elif not inputs_only:
            batches = batches.map(lambda x: (x, x))
        return with_data_sharding(batches.prefetch(2))

    def worker_dataset(
        self, local: int, shuffle: bool, seed: int, steps: int | None = None, augment: Augment | None = None
    ) -> Any:
        """This worker's batches of `local` rows from its own shard files (inputs only, see
        layers.MultiWorkerTrainer): endless (training, its rows repeating) or `steps` batches
        (validation: its rows, then as many of its first rows again as the batches need, kept in
        memory after the first epoch so that filling them costs no second pass over its files);
        augmented with draws of its own."""
        tf = import_tensorflow()
        assert isinstance(self.data, ShardedData)  # a text file is read whole by every worker
        share = self.data.share
        assert share is not None
        if steps is None:
            rows = self._rows(shuffle, seed + share.index).repeat()
        else:
            filler = steps * local - self.data.worker_counts[self.part][share.index]
            rows = self._rows(False, seed)
            if filler > 0:
                rows = rows.concatenate(self._rows(False, seed).repeat().take(filler).cache())
            # Known length: Keras counts the batches instead of running off the end (and warning).
            rows = rows.apply(tf.data.experimental.assert_cardinality(steps * local))
        batches = rows.batch(local, drop_remainder=True).map(self._scaler(), num_parallel_calls=PIPELINE_THREADS)
        if augment is not None:
            batches = _with_draws(batches, seed + share.index).map(augment)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        # untuned: tf.data's shuffle-and-repeat fusion would read passes ahead to fill its buffer.
        return untuned(batches.prefetch(2)).with_options(options)

    def _rows(self, shuffle: bool, seed: int) -> Any:
        """The part's raw rows (texts), block order and rows reshuffled every epoch when `shuffle`."""
        tf = import_tensorflow()
        data, part = self.data, self.part
        if isinstance(data, StreamedTexts):
            return data.tf_texts(part, shuffle, seed)
        epochs = itertools.count()  # from_generator calls `blocks` afresh every epoch

        def blocks() -> Iterator[np.ndarray]:
            rng = np.random.default_rng([seed, next(epochs)]) if shuffle else None
            for rows, _ in data.blocks(part, rng):
                yield rows

        raw = tf.data.Dataset.from_generator(
            blocks, output_signature=tf.TensorSpec((None, *data.shards.row_shape), tf.as_dtype(data.shards.dtype))
        )
        rows = raw.unbatch()
        if shuffle:
            buffer = max(BLOCK_ROWS, SHUFFLE_BUFFER_BYTES // data.shards.row_bytes)
            if data.share is not None:  # a buffer beyond the share would fill from the next passes
                buffer = min(buffer, max(data.worker_counts[part]))
            rows = rows.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        return rows

    def _scaler(self) -> Callable[[Any], Any]:
        """Raw rows to scaled float32 samples (texts to vectors), in TensorFlow (the run's saved scaling)."""
        tf = import_tensorflow()
        data = self.data
        if isinstance(data, StreamedTexts):
            return data.vectorizer()
        features = math.prod(data.sample_shape)
        # float32 arithmetic, unless the data's magnitude is beyond float32's exact integers
        # (2^24): then (x - offset) is computed in float64, as the in-memory path does.
        exact = tf.float64 if np.abs(data.scaling.offset).max() > 2**24 else tf.float32
        offset = tf.constant(_per_feature(data.scaling.offset, data.sample_shape), exact)
        scale = tf.constant(_per_feature(data.scaling.scale, data.sample_shape), exact)
        shape = (-1, *data.sample_shape)

        def scaled(batch: Any) -> Any:
            flat = tf.reshape(tf.cast(batch, exact), (-1, features))
            return tf.cast(tf.reshape((flat - offset) / scale, shape), tf.float32)

        return scaled


def _per_feature(statistic: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
    """A scaling statistic (one number, one per feature, or one per channel) for every feature of a flat sample."""
    features = math.prod(sample_shape)
    if statistic.size == features:
        return statistic.reshape(features)
    return np.broadcast_to(statistic.reshape(-1)[-1:] if statistic.size == 1 else statistic, sample_shape).reshape(
        features
    )


def _with_noise(batches: Any, noise: NoiseSpec, seed: int, fixed_noise: bool) -> Any:
    """(corrupted, clean) pairs: fresh noise per batch, or with `fixed_noise` the same per batch number."""
    tf = import_tensorflow()
    fresh = np.random.default_rng(seed)

    def corrupted(number: np.ndarray, clean: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([seed, int(number)]) if fixed_noise else fresh
        return corrupt(clean, noise, rng)

    def noisy(number: Any, clean: Any) -> Any:
        inputs = tf.numpy_function(corrupted, [number, clean], tf.float32, stateful=not fixed_noise)
        return tf.ensure_shape(inputs, clean.shape), clean

    return batches.enumerate().map(noisy)
