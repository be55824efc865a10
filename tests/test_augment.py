"""data.augment: the config, what each augmentation does to images, and that only training data sees it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from aecli.augment import augmented_examples, augmenter, check_augment
from aecli.config import AugmentConfig, validate_config
from aecli.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from aecli.data import load_dataset

    dataset = load_dataset(validate_config({"data": {"limit": 300}}).data, seed=0)
    assert dataset.x_val is not None
    return dataset.x_train, dataset.x_val


def _images(count: int = 64, size: int = 12, seed: int = 0) -> np.ndarray:
    """Random images in [0, 1] with a black border, so that small moves keep them inside."""
    images = np.zeros((count, size, size, 1), np.float32)
    images[:, 3:-3, 3:-3] = np.random.default_rng(seed).random((count, size - 6, size - 6, 1))
    return images


def _augment(cfg: AugmentConfig, images: np.ndarray, draw: tuple[int, int] = (0, 0)) -> np.ndarray:
    import tensorflow as tf

    augment = augmenter(cfg, (0.0, 1.0))
    assert augment is not None
    return augment(tf.constant(images), tf.constant(draw, tf.int64)).numpy()


def test_augmentation_is_off_by_default_and_all_zero_amounts_mean_off() -> None:
    assert validate_config({}).data.augment.active == []
    zero = validate_config({"data": {"augment": {"rotation": 0, "fill_mode": "reflect"}}}).data.augment
    assert zero.active == [] and zero.describe() == "none" and augmenter(zero, (0.0, 1.0)) is None
    on = AugmentConfig(rotation=0.1, flip="horizontal", contrast=0.2)
    assert on.active == ["rotation", "flip", "contrast"]
    assert on.describe() == "rotation 0.1, flip horizontal, contrast 0.2"


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"rotation": -0.1}, "data.augment.rotation: input should be greater than or equal to 0, got -0.1"),
        ({"zoom": 1}, "data.augment.zoom: input should be less than 1"),
        ({"flip": "diagonal"}, "data.augment.flip: input should be 'none', 'horizontal'"),
        ({"contrast": True}, "data.augment.contrast: expected a number, not a boolean"),
        ({"rotaton": 0.1}, "data.augment.rotaton: unknown key; did you mean rotation?"),
    ],
)
def test_bad_amounts_are_one_line_errors(augment: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"data": {"augment": augment}})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_augmentation_needs_images_and_the_tf_data_pipeline() -> None:
    check_augment(AugmentConfig(rotation=0.1), (28, 28, 1))
    check_augment(AugmentConfig(), (64,))  # nothing on: any data
    for cfg, key in ((AugmentConfig(rotation=0.1), "rotation"), (AugmentConfig(flip="vertical"), "flip")):
        with pytest.raises(ConfigError, match=rf"^data\.augment\.{key}: .*samples have shape \(64,\), with no spatial"):
            check_augment(cfg, (64,))
    with pytest.raises(ConfigError, match="training.input_pipeline keras hands numpy arrays to fit"):
        validate_config({"data": {"augment": {"zoom": 0.1}}, "training": {"input_pipeline": "keras"}})


def test_flips_mirror_about_half_the_images_exactly() -> None:
    images = _images(200)
    out = _augment(AugmentConfig(flip="horizontal"), images)
    mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)])
    unchanged = np.array([np.array_equal(o, i) for o, i in zip(out, images, strict=True)])
    assert (mirrored ^ unchanged).all()  # each image is one or the other, resampled without blur
    assert 60 < mirrored.sum() < 140
    both = _augment(AugmentConfig(flip="horizontal_and_vertical"), images)
    assert any(np.array_equal(o, i[::-1, ::-1]) for o, i in zip(both, images, strict=True))


def test_moves_are_fresh_per_draw_reproducible_and_keep_the_value_range() -> None:
    images = _images()
    cfg = AugmentConfig(translation=0.1, rotation=0.05, zoom=0.1)
    first, again, other = _augment(cfg, images, (1, 2)), _augment(cfg, images, (1, 2)), _augment(cfg, images, (1, 3))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other) and not np.allclose(first, images)
    assert first.min() >= 0.0 and first.max() <= 1.0
    # small moves keep most of each image's ink: bilinear resampling conserves it up to the edges
    np.testing.assert_allclose(first.sum(axis=(1, 2, 3)), images.sum(axis=(1, 2, 3)), rtol=0.3)


def _bar_angle(image: np.ndarray) -> float:
    """The orientation of the bright mass of an image, in degrees from horizontal (second moments)."""
    rows, columns = np.indices(image.shape[:2])
    weight = image[..., 0] / image.sum()
    dr, dc = rows - (weight * rows).sum(), columns - (weight * columns).sum()
    var_r, var_c, cov = (weight * dr * dr).sum(), (weight * dc * dc).sum(), (weight * dr * dc).sum()
    return float(np.degrees(0.5 * np.arctan2(2 * cov, var_c - var_r)))


def test_rotation_turns_by_up_to_its_fraction_of_a_turn() -> None:
    bar = np.zeros((1, 21, 21, 1), np.float32)
    bar[0, 10, 3:18] = 1.0  # a horizontal bar through the centre
    angles = np.abs([_bar_angle(image) for image in _augment(AugmentConfig(rotation=0.05), np.repeat(bar, 300, 0))])
    assert angles.max() <= 18.5 and angles.max() > 15  # 0.05 of a turn is 18 degrees, either way
    assert 5 < np.median(angles) < 13  # uniform in [0, 18]: median 9


def test_translation_shifts_by_up_to_its_fraction_of_the_size() -> None:
    dot = np.zeros((1, 20, 20, 1), np.float32)
    dot[0, 9:11, 9:11] = 1.0
    moved = _augment(AugmentConfig(translation=0.1), np.repeat(dot, 300, 0))
    rows, columns = np.indices((20, 20))
    centres = np.array([[(m[..., 0] * rows).sum(), (m[..., 0] * columns).sum()] / m.sum() for m in moved])
    shifts = np.abs(centres - 9.5)
    assert shifts.max() <= 2.0 + 1e-3 and shifts.max() > 1.7  # 0.1 of 20 pixels, along each axis


def test_zoom_scales_by_up_to_its_fraction() -> None:
    square = np.zeros((1, 21, 21, 1), np.float32)
    square[0, 6:15, 6:15] = 1.0
    masses = np.array([m.sum() for m in _augment(AugmentConfig(zoom=0.2), np.repeat(square, 300, 0))])
    scale = np.sqrt(square.sum() / masses)  # zooming out by a factor z shrinks the area by z^2
    assert 0.8 - 0.02 <= scale.min() < 0.85 and 1.15 < scale.max() <= 1.2 + 0.02


def test_fill_modes_map_outside_pixels_as_keras_does() -> None:
    import tensorflow as tf

    from aecli.augment import _fixed_index

    index = tf.constant([-3, -2, -1, 0, 1, 2, 3, 4, 5, 6])
    expected = {
        "nearest": [0, 0, 0, 0, 1, 2, 3, 3, 3, 3],
        "constant": [0, 0, 0, 0, 1, 2, 3, 3, 3, 3],  # clamped, then zeroed by the caller
        "reflect": [2, 1, 0, 0, 1, 2, 3, 3, 2, 1],  # d c b a | a b c d | d c b a
        "wrap": [1, 2, 3, 0, 1, 2, 3, 0, 1, 2],
    }
    for mode, mapped in expected.items():
        assert _fixed_index(index, 4, mode).numpy().tolist() == mapped, mode
    image = np.ones((1, 8, 8, 1), np.float32)
    moved = _augment(AugmentConfig(translation=0.5, fill_mode="constant"), np.repeat(image, 20, 0))
    assert (moved == 0).any()  # what a shift uncovers is 0
    moved = _augment(AugmentConfig(translation=0.5, fill_mode="nearest"), np.repeat(image, 20, 0))
    np.testing.assert_allclose(moved, 1.0)  # ... or the edge, repeated


def test_contrast_keeps_each_images_mean_and_the_range() -> None:
    images = np.full((32, 6, 6, 1), 0.5, np.float32)
    images[:, :, :3] = 0.25
    out = _augment(AugmentConfig(contrast=0.5), images)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=1e-6)
    spreads = out.max(axis=(1, 2, 3)) - out.min(axis=(1, 2, 3))
    assert spreads.min() < 0.25 < spreads.max() and spreads.max() <= 0.25 * 1.5 + 1e-6


def _first_training_pair(feeds, fused: bool) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of the first training step; a fused block holds the augmented batches
    themselves (its noise is drawn inside the compiled program), so there inputs are targets."""
    first = next(iter(feeds.train))
    if fused:
        batch = first[0].numpy()[0]
        return batch, batch
    return first[0].numpy(), first[1].numpy()


@pytest.mark.parametrize(("block_steps", "pipeline"), [(4, "tensor"), (0, "tensor"), (0, "arrays")])
def test_feeds_augment_training_batches_and_never_validation(digits: tuple, block_steps: int, pipeline: str) -> None:
    from aecli.feeds import FeedOptions, make_feeds
    from aecli.noise import NoiseSpec

    x_train, x_val = digits
    augment = augmenter(AugmentConfig(rotation=0.1, translation=0.1), (0.0, 1.0))
    for noise in (None, NoiseSpec("mask", 0.3)):
        options = FeedOptions(32, False, 0, pipeline, noise=noise, block_steps=block_steps, augment=augment)
        feeds = make_feeds(x_train, x_val, options)
        pairs = [(a.numpy(), b.numpy()) for a, b in feeds.validation]
        np.testing.assert_array_equal(np.concatenate([b for _, b in pairs]), x_val)  # clean targets
        if noise is None:
            np.testing.assert_array_equal(np.concatenate([a for a, _ in pairs]), x_val)  # untouched inputs
        inputs, targets = _first_training_pair(feeds, fused=bool(block_steps))
        assert targets.shape == (32, *x_train.shape[1:])
        assert not np.allclose(targets, x_train[:32])  # moved (no shuffle: these are the first 32 rows)
        assert (
            np.abs(targets.sum(axis=(1, 2, 3)) - x_train[:32].sum(axis=(1, 2, 3))).mean()
            < 0.2 * x_train[:32].sum(axis=(1, 2, 3)).mean()
        )  # ... the same images, moved
        if noise is None or block_steps:
            np.testing.assert_array_equal(inputs, targets)  # an augmented image is its own target
        else:  # mask noise zeroes pixels of the augmented target: the input is that, corrupted
            assert ((inputs == targets) | (inputs == 0)).all() and (inputs != targets).any()


def test_fused_blocks_draw_new_augmentations_every_epoch_and_the_same_on_a_rerun(digits: tuple) -> None:
    from aecli.feeds import FeedOptions, make_feeds

    x_train, _ = digits
    augment = augmenter(AugmentConfig(rotation=0.1, zoom=0.1), (0.0, 1.0))
    options = FeedOptions(32, False, 0, "tensor", block_steps=4, augment=augment)

    def two_epochs() -> list[np.ndarray]:
        feeds = make_feeds(x_train, None, options)
        blocks = iter(feeds.train)  # endless: one iterator for the whole fit
        return [next(blocks)[0].numpy() for _ in range(2 * feeds.steps_per_epoch)]

    first, again = two_epochs(), two_epochs()
    epoch = len(first) // 2
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)  # reproducible from the seed
    assert not np.allclose(first[0], first[epoch])  # the same rows (no shuffle), new draws


def test_streamed_shards_are_augmented_too(tmp_path: Path) -> None:
    from aecli.commands.prepare import prepare_shards
    from aecli.config import DataConfig
    from aecli.data.shards import open_sharded
    from aecli.feeds import Stream

    images = (np.random.default_rng(0).random((200, 8, 8)) * 255).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    cfg = DataConfig(source=str(tmp_path / "images.npy"))
    out = prepare_shards(cfg, tmp_path / "shards", 64, "npy", say=lambda _: None).out_dir
    data = open_sharded(DataConfig(source=str(out)), seed=0)
    augment = augmenter(AugmentConfig(flip="horizontal"), data.scaled_range)
    plain = [b.numpy() for _, b in Stream(data, "train").dataset(200, False, 0)]
    flipped = [(a.numpy(), b.numpy()) for a, b in Stream(data, "train").dataset(200, False, 0, augment=augment)]
    for (inputs, targets), clean in zip(flipped, plain, strict=True):
        np.testing.assert_array_equal(inputs, targets)
        mirrored = [
            np.array_equal(t, c[:, ::-1]) and not np.array_equal(t, c) for t, c in zip(targets, clean, strict=True)
        ]
        assert 0.3 < np.mean(mirrored) < 0.7


def test_training_with_augmentation_validates_on_clean_rows(tiny_config, cli, tmp_path: Path) -> None:
    """The reported val_loss is the model's loss on the untouched validation rows, the test
    report is computed on untouched test rows, and the run records and pictures the augmentation."""
    import keras

    from aecli.data import load_dataset
    from aecli.trained_run import open_trained_run

    config = tiny_config({"data": {"augment": {"rotation": 0.05, "translation": 0.1}}, "training": {"epochs": 2}})
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["augment"]["rotation"] == 0.05
    assert (run_dir / "augmented_samples.png").stat().st_size > 1000
    run = open_trained_run(run_dir)
    data = load_dataset(run.config.data, run.config.training.seed)
    model = keras.models.load_model(run_dir / "model.keras")
    history = (run_dir / "history.csv").read_text().splitlines()
    last_val_loss = float(history[-1].split(",")[2])
    clean_val = float(model.evaluate(data.x_val, data.x_val, verbose=0))
    np.testing.assert_allclose(last_val_loss, clean_val, rtol=1e-4)
    test_mse = json.loads((run_dir / "metrics.json").read_text())["reconstruction"]["mse"]
    clean_test = float(np.mean((model.predict(data.x_test, verbose=0) - data.x_test) ** 2))
    np.testing.assert_allclose(test_mse, clean_test, rtol=1e-4)
    evaluated = cli("evaluate", run_dir, "--out", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| augmentation | translation 0.1, rotation 0.05 |" in report
    assert "](augmented_samples.png)" in report and (tmp_path / "eval" / "augmented_samples.png").is_file()


def test_augmentation_on_tabular_data_is_refused_before_a_run_exists(tiny_config, cli, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b,c\n" + "\n".join(f"{i},{i % 3},{i % 5}" for i in range(40)) + "\n")
    config = tiny_config({"data": {"source": str(csv), "augment": {"flip": "horizontal"}}})
    for command in (("validate", config), ("train", config, "--runs-dir", tmp_path / "runs")):
        result = cli(*command)
        assert result.exit_code == 2 and result.stderr.startswith("error: data.augment.flip: "), result.output
    assert not (tmp_path / "runs").exists()


def test_augmented_examples_are_distinct_draws_of_the_same_images() -> None:
    images = _images(4)
    augment = augmenter(AugmentConfig(rotation=0.1), (0.0, 1.0))
    assert augment is not None
    copies = augmented_examples(augment, images, 3, seed=0)
    assert len(copies) == 3 and all(copy.shape == images.shape for copy in copies)
    assert not np.allclose(copies[0], copies[1])
