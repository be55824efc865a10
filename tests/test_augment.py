"""data.augment: the config, what each augmentation does to images, and that only training data sees it."""

from __future__ import annotations

import json
import math
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


def test_a_quarter_turn_rotates_an_image_exactly() -> None:
    image = _images(1)
    turned = _augment(AugmentConfig(rotation=0.25), np.repeat(image, 400, axis=0))
    quarter = [np.rot90(image[0], k) for k in (1, 3)]
    # rotation 0.25 draws angles in [-90, 90] degrees: the extremes are rare, but close ones
    # match a 90-degree turn almost exactly, the sign convention included either way
    closest = min(min(np.abs(t - q).max() for q in quarter) for t in turned)
    assert closest < 0.05


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_fill_modes_fill_what_a_shift_uncovers(fill_mode: str) -> None:
    image = np.ones((1, 8, 8, 1), np.float32)
    image[0, :, 0] = 0.5  # a distinct left column
    shifted = _augment(AugmentConfig(translation=0.5, fill_mode=fill_mode), np.repeat(image, 50, axis=0))
    if fill_mode == "constant":
        assert (shifted == 0).any()  # uncovered pixels are 0
    else:
        assert shifted.min() >= 0.5  # uncovered pixels repeat, mirror or wrap the image's own values


def test_contrast_keeps_each_images_mean_and_the_range() -> None:
    images = np.full((32, 6, 6, 1), 0.5, np.float32)
    images[:, :, :3] = 0.25
    out = _augment(AugmentConfig(contrast=0.5), images)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=1e-6)
    spreads = out.max(axis=(1, 2, 3)) - out.min(axis=(1, 2, 3))
    assert spreads.min() < 0.25 < spreads.max() and spreads.max() <= 0.25 * 1.5 + 1e-6


def test_feeds_augment_training_batches_and_never_validation(digits: tuple) -> None:
    from aecli.feeds import FeedOptions, make_feeds
    from aecli.noise import NoiseSpec

    x_train, x_val = digits
    augment = augmenter(AugmentConfig(rotation=0.1, translation=0.1), (0.0, 1.0))
    for block_steps in (4, 0):  # fused blocks, then Keras's loop over a tf.data pipeline
        for noise in (None, NoiseSpec("gaussian", 0.2)):
            options = FeedOptions(32, False, 0, "tensor", noise=noise, block_steps=block_steps, augment=augment)
            feeds = make_feeds(x_train, x_val, options)
            val_in, val_out = (
                np.concatenate(part)
                for part in zip(*[(a.numpy(), b.numpy()) for a, b in feeds.validation], strict=True)
            )
            np.testing.assert_array_equal(val_out, x_val)  # targets: the clean validation rows
            if noise is None:
                np.testing.assert_array_equal(val_in, x_val)
            first = next(iter(feeds.train))
            if block_steps:
                full, rest = divmod(len(x_train), 32)
                assert feeds.steps_per_epoch == math.ceil(full / block_steps) + (1 if rest else 0)
                batch = first[0].numpy()[0]  # the first step of the first block: augmented samples
            else:
                batch = first[1].numpy()  # the target: the augmented batch, the input's clean version
                assert not np.array_equal(first[0].numpy(), batch) or noise is None
            assert batch.shape == (32, *x_train.shape[1:])
            assert not np.allclose(batch, x_train[:32])


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


def test_the_report_picture_shows_augmented_versions_of_the_first_images() -> None:
    images = _images(4)
    augment = augmenter(AugmentConfig(rotation=0.1), (0.0, 1.0))
    assert augment is not None
    copies = augmented_examples(augment, images, 3, seed=0)
    assert len(copies) == 3 and all(copy.shape == images.shape for copy in copies)
    assert not np.allclose(copies[0], copies[1])
