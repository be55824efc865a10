"""Conv, denoising, sparse and variational autoencoders: training, saving, loading, bad combinations."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aecli.config import validate_config
from aecli.data import load_dataset
from aecli.errors import ConfigError
from aecli.feeds import NoisyBatches
from aecli.models import build_autoencoder, count_parameters, plan_autoencoder
from aecli.noise import NoiseSpec, corrupt, corrupt_tensor
from aecli.training import fit_autoencoder, seed_everything

BASE = {"data": {"limit": 300}, "training": {"epochs": 5, "batch_size": 32}, "optimizer": {"learning_rate": 0.005}}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    dataset = load_dataset(validate_config(BASE).data, seed=0)
    assert dataset.x_val is not None
    return dataset.x_train, dataset.x_val


def merged(raw: dict) -> dict:
    out = {key: dict(value) for key, value in BASE.items()}
    for key, value in raw.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def train(raw: dict, digits: tuple, tmp_path: Path):
    config = validate_config(merged(raw))
    seed_everything(0)
    autoencoder = build_autoencoder(config.model, (8, 8, 1), config.loss.name)
    assert autoencoder.model.count_params() == count_parameters(plan_autoencoder(config.model, (8, 8, 1)))
    result = fit_autoencoder(autoencoder.model, *digits, config.training, config.optimizer, config.loss, tmp_path)
    history = result.history
    assert history[-1]["loss"] < history[0]["loss"], history
    assert history[-1]["val_loss"] < history[0]["val_loss"], history
    return autoencoder, history


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "conv", "filters": [8, 16], "latent_dim": 8},
        {"kind": "conv", "filters": [8], "downsample": "maxpool", "batch_norm": True, "dropout": 0.1},
        {"encoder": [32], "latent_dim": 8, "regularization": {"l1": 1e-5, "l2": 1e-4}},
        {"encoder": [32], "latent_dim": 16, "regularization": {"activity_l1": 1e-4}},
        {
            "encoder": [32],
            "latent_dim": 16,
            "latent_activation": "sigmoid",
            "regularization": {"sparsity": {"target": 0.05, "weight": 0.1}},
        },
        {"encoder": [32], "latent_dim": 8, "batch_norm": True, "dropout": 0.2},
    ],
    ids=["conv-stride", "conv-maxpool-bn-dropout", "l1-l2", "activity-l1", "kl-sparsity", "dense-bn-dropout"],
)
def test_model_kinds_and_controls_train(model: dict, digits: tuple, tmp_path: Path) -> None:
    train({"model": model}, digits, tmp_path)


@pytest.mark.parametrize("body", ["dense", "conv"])
def test_vae_reports_reconstruction_and_kl(body: str, digits: tuple, tmp_path: Path) -> None:
    model = {"kind": "vae", "body": body, "latent_dim": 2, "beta": 0.5}
    if body == "dense":
        model["encoder"] = [32]
    else:
        model["filters"] = [8, 16]
    _, history = train({"model": model, "loss": "bce"}, digits, tmp_path)
    for key in ("reconstruction_loss", "kl_loss", "val_reconstruction_loss", "val_kl_loss"):
        assert key in history[-1]
    last = history[-1]
    assert last["kl_loss"] >= 0
    # loss = reconstruction (summed over the 64 pixels) + beta * KL, exactly (to float32 rounding),
    # although 216 training rows end each epoch with a partial batch of 24
    assert len(digits[0]) % 32 != 0
    for row in history:
        assert row["loss"] == pytest.approx(row["reconstruction_loss"] + 0.5 * row["kl_loss"], rel=1e-5)
    assert last["reconstruction_loss"] > 64 * 0.1  # a sum over pixels, not a mean


@pytest.mark.parametrize("kind", ["gaussian", "salt_pepper", "mask"])
def test_denoising_trains_on_every_noise(kind: str, digits: tuple, tmp_path: Path) -> None:
    train(
        {"model": {"encoder": [32], "latent_dim": 8}, "training": {"noise": {"kind": kind, "amount": 0.2}}},
        digits,
        tmp_path,
    )


def test_noisy_batches_corrupt_inputs_only_and_afresh_each_epoch() -> None:
    x = np.full((10, 4), 0.5, np.float32)
    batches = NoisyBatches(x, 4, NoiseSpec("gaussian", 0.1), seed=0, shuffle=True)
    assert len(batches) == 3
    noisy, clean = batches[0]
    assert np.all(clean == 0.5) and not np.allclose(noisy, clean)
    batches.on_epoch_end()
    assert not np.allclose(batches[0][0], noisy)


@pytest.mark.parametrize(("kind", "amount"), [("gaussian", 0.1), ("salt_pepper", 0.3), ("mask", 0.2)])
def test_noise_drawn_inside_the_compiled_step_matches_numpys(kind: str, amount: float) -> None:
    """The fused path's noise (TensorFlow, stateless) has the distribution of the numpy noise, is
    reproducible from its seed, and differs from one step's seed to the next."""
    import tensorflow as tf

    x = np.full((200, 500), 0.5, np.float32)
    spec = NoiseSpec(kind, amount)
    graph = corrupt_tensor(tf.constant(x), spec, tf.constant([0, 7], tf.int64)).numpy()
    numpy = corrupt(x, spec, np.random.default_rng(0))
    for drawn in (graph, numpy):
        changed = drawn != 0.5
        if kind == "gaussian":
            assert abs(float(np.std(drawn - x)) - amount) < 0.003 and abs(float(np.mean(drawn - x))) < 0.003
        elif kind == "salt_pepper":
            assert abs(changed.mean() - amount) < 0.01 and abs((drawn == 1).mean() - amount / 2) < 0.01
        else:
            assert abs((drawn == 0).mean() - amount) < 0.01 and not np.any(drawn[changed] != 0)
    assert np.array_equal(graph, corrupt_tensor(tf.constant(x), spec, tf.constant([0, 7], tf.int64)).numpy())
    assert not np.array_equal(graph, corrupt_tensor(tf.constant(x), spec, tf.constant([0, 8], tf.int64)).numpy())


def test_denoising_in_fused_blocks_follows_kerass_loop(digits: tuple, tmp_path: Path) -> None:
    """Fused blocks (noise drawn in the compiled program) and Keras's loop (NoisyBatches, numpy
    noise) give the same loss curve to within the noise's own randomness."""
    losses = {}
    for pipeline in ("tensor", "arrays"):
        config = validate_config(
            {
                "model": {"encoder": [32], "latent_dim": 8},
                "training": {"epochs": 6, "noise": {"kind": "gaussian", "amount": 0.3}, "input_pipeline": pipeline},
            }
        )
        seed_everything(0)
        model = build_autoencoder(config.model, digits[0].shape[1:]).model
        run_dir = tmp_path / pipeline
        run_dir.mkdir()
        result = fit_autoencoder(model, *digits, config.training, config.optimizer, config.loss, run_dir)
        losses[pipeline] = np.array([[row["loss"], row["val_loss"]] for row in result.history])
    assert losses["tensor"][-1, 0] < 0.7 * losses["tensor"][0, 0]
    np.testing.assert_allclose(losses["tensor"], losses["arrays"], rtol=0.05)


@pytest.mark.parametrize(
    "schedule",
    [
        {"kind": "exponential", "decay_rate": 0.5},
        {"kind": "cosine"},
        {"kind": "cosine", "warmup_epochs": 2},
        {"kind": "reduce_on_plateau", "patience": 1},
    ],
)
def test_learning_rate_schedules(schedule: dict, digits: tuple, tmp_path: Path) -> None:
    _, history = train(
        {"model": {"encoder": [32], "latent_dim": 8}, "training": {"lr_schedule": schedule}}, digits, tmp_path
    )
    rates = [row["learning_rate"] for row in history]
    if schedule["kind"] == "exponential":
        assert rates[1] == pytest.approx(rates[0] * 0.5, rel=0.05)
    if schedule == {"kind": "cosine"}:
        assert rates[-1] < rates[0]
    if "warmup_epochs" in schedule:  # rises to the optimizer's rate over two epochs, then decays
        peak = BASE["optimizer"]["learning_rate"]
        assert rates[0] == pytest.approx(peak / 2, rel=0.1) and rates[1] == pytest.approx(peak, rel=0.01)
        assert rates[1] > rates[2] > rates[-1]


def test_vae_round_trip_after_import_aecli(digits: tuple, tmp_path: Path) -> None:
    autoencoder, _ = train(
        {"model": {"kind": "vae", "body": "conv", "filters": [8], "latent_dim": 2}}, digits, tmp_path
    )
    x = digits[1][:16]
    for part in ("model", "encoder"):
        getattr(autoencoder, part).save(tmp_path / f"{part}.keras")
    np.save(tmp_path / "x.npy", x)
    expected_recon = np.asarray(autoencoder.model.predict_on_batch(x))
    expected_mean = np.asarray(autoencoder.encoder.predict_on_batch(x)[0])
    np.testing.assert_allclose(expected_recon, autoencoder.model.predict_on_batch(x))  # inference is deterministic
    script = textwrap.dedent(
        f"""
        import keras, aecli, numpy as np
        folder = {str(tmp_path)!r}
        x = np.load(folder + "/x.npy")
        model = keras.saving.load_model(folder + "/model.keras")
        encoder = keras.saving.load_model(folder + "/encoder.keras")
        np.save(folder + "/recon.npy", model.predict_on_batch(x))
        np.save(folder + "/mean.npy", encoder.predict_on_batch(x)[0])
        print(type(model).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "VariationalAutoencoder"
    np.testing.assert_array_equal(np.load(tmp_path / "recon.npy"), expected_recon)
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), expected_mean)


def test_conv_model_loads_in_plain_keras(digits: tuple, tmp_path: Path) -> None:
    autoencoder, _ = train({"model": {"kind": "conv", "filters": [8], "batch_norm": True}}, digits, tmp_path)
    autoencoder.model.save(tmp_path / "model.keras")
    x = digits[1][:8]
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, keras, numpy as np\n"
        f"m = keras.saving.load_model({str(tmp_path / 'model.keras')!r}, safe_mode=True)\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, m.predict_on_batch(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "assert 'aecli' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), autoencoder.model.predict_on_batch(x), atol=1e-6)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"model": {"regularization": {"sparsity": {"target": 1.5}}}},
            r"model\.regularization\.sparsity\.target: input should be less than 1",
        ),
        (
            {"model": {"regularization": {"sparsity": {"target": 0}}}},
            r"model\.regularization\.sparsity\.target: input should be greater than 0",
        ),
        (
            {"model": {"regularization": {"sparsity": True}}},
            r"regularization\.sparsity: needs latent_activation sigmoid",
        ),
        ({"model": {"kind": "vae", "beta": -1}}, r"model\.beta: input should be greater than or equal to 0"),
        ({"model": {"beta": 2}}, r"model\.beta: applies to model\.kind vae and variational sequence models"),
        ({"model": {"filters": [8]}}, r"model\.filters: applies to conv models only"),
        ({"model": {"kind": "vae"}, "loss": "huber"}, r"loss\.name: a vae's reconstruction term is mse or bce"),
        ({"training": {"noise": {"kind": "mask", "amount": 1.5}}}, r"training\.noise\.amount: the mask fraction"),
        (
            {"training": {"noise": {"kind": "gaussian", "amount": 0}}},
            r"training\.noise\.amount: input should be greater",
        ),
        (
            {"training": {"lr_schedule": {"kind": "cosine", "factor": 0.5}}},
            r"training\.lr_schedule\.factor: does not apply to schedule 'cosine'",
        ),
        (
            {"training": {"epochs": 3, "lr_schedule": {"kind": "cosine", "warmup_epochs": 3}}},
            r"lr_schedule\.warmup_epochs \(3\) must be fewer than epochs \(3\)",
        ),
    ],
)
def test_bad_combinations_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_conv_on_tabular_data_is_refused(cli, tiny_config, tmp_path: Path) -> None:
    np.save(tmp_path / "table.npy", np.random.default_rng(0).random((50, 6)))
    result = cli(
        "train",
        tiny_config({"data": {"source": str(tmp_path / "table.npy")}, "model": {"kind": "conv"}}),
        "--runs-dir",
        tmp_path / "runs",
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: model.kind: conv with conv layers needs image data")
    assert not (tmp_path / "runs").exists()


def test_conv_shape_that_cannot_be_mirrored() -> None:
    config = validate_config({"model": {"kind": "conv", "filters": [8, 8, 8]}})
    with pytest.raises(ConfigError, match=r"3 down-sampling blocks cannot be mirrored on 28x28 inputs"):
        plan_autoencoder(config.model, (28, 28, 1))
    assert plan_autoencoder(validate_config({"model": {"kind": "conv"}}).model, (28, 28, 1))[-1].output_shape == (
        28,
        28,
        1,
    )


def test_evaluate_and_reconstruct_work_on_a_vae_run(cli, tiny_config, tmp_path: Path) -> None:
    config = tiny_config(
        {"model": {"kind": "vae", "body": "conv", "filters": [8], "latent_dim": 2}, "training": {"epochs": 2}}
    )
    trained = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert trained.exit_code == 0, trained.output
    run = Path(trained.stdout.strip().splitlines()[-1])
    evaluated = cli("evaluate", run, "--normal-classes", "0,1,2")
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((Path(evaluated.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert {"latent", "anomaly", "reconstruction"} <= set(metrics)
    rebuilt = cli("reconstruct", run, "--indices", "0,1", "--noise", "mask:0.2", "--save-latent")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert np.load(Path(rebuilt.stdout.strip().splitlines()[-1]) / "latent.npy").shape == (2, 2)
