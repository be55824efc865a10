"""aecli evaluate and aecli reconstruct through the CLI, on the shared trained digits run."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_data import write_idx


def fingerprint(run: Path) -> dict[str, str]:
    files = [p for p in run.iterdir() if p.is_file()]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def last_line(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def test_evaluate_writes_every_metric_and_plot_without_touching_the_run(cli, trained_run: Path) -> None:
    before = fingerprint(trained_run)
    result = cli("evaluate", trained_run)
    assert result.exit_code == 0, result.output
    out = last_line(result)
    assert out.parent == trained_run and out.name.startswith("eval-")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["reconstruction"]) == {"mse", "mae", "bce", "psnr", "ssim"}
    assert {"kmeans_nmi", "kmeans_ari", "silhouette", "knn_accuracy"} <= set(metrics["latent"])
    assert metrics["n_samples"] == 80 and "anomaly" not in metrics
    for name in (
        "loss_curves.png",
        "reconstructions.png",
        "error_histogram.png",
        "residuals.png",
        "class_extremes.png",  # labelled images
        "latent.png",
        "errors.csv",
        "report.md",
        "report.html",
    ):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 6
    assert fingerprint(trained_run) == before


def test_evaluate_with_normal_classes_reports_anomaly_metrics(cli, trained_run: Path, tmp_path: Path) -> None:
    result = cli(
        "evaluate",
        trained_run,
        "--normal-classes",
        "0,1",
        "--threshold",
        "contamination:0.2",
        "--score",
        "mae",
        "--out",
        tmp_path / "ev",
    )
    assert result.exit_code == 0, result.output
    anomaly = json.loads((tmp_path / "ev" / "metrics.json").read_text())["anomaly"]
    assert anomaly["positive_class"] == "anomaly" and anomaly["score"] == "mae"
    assert anomaly["normal_classes"] == [0, 1] and anomaly["n_flagged"] == 16
    assert 0 <= anomaly["auroc"] <= 1 and set(anomaly) >= {"auprc", "precision", "recall", "f1", "threshold"}
    header = (tmp_path / "ev" / "errors.csv").read_text().splitlines()[0]
    assert header.endswith("is_anomaly,flagged")


def test_evaluate_with_out_of_distribution_data(cli, trained_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.save(tmp_path / "noise.npy", 12 + rng.random((60, 8, 8)) * 4)  # same shape and range, nearly all bright
    result = cli("evaluate", trained_run, "--anomaly-data", tmp_path / "noise.npy", "--out", tmp_path / "ood")
    assert result.exit_code == 0, result.output
    anomaly = json.loads((tmp_path / "ood" / "metrics.json").read_text())["anomaly"]
    assert anomaly["n_anomalies"] == 60 and anomaly["n_normal"] == 80
    assert anomaly["auroc"] > 0.9 and anomaly["threshold_spec"] == "fpr:0.05"


def test_evaluate_on_another_source_with_data_overrides(cli, trained_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "more.npz"
    rng = np.random.default_rng(2)
    np.savez(path, x=rng.random((30, 8, 8)) * 16, y=rng.integers(0, 3, 30))
    result = cli("evaluate", trained_run, "--data", path, "--set", "data.limit=20", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n_samples"] == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "median"], "error: --threshold 'median': expected"),
        (["--score", "rmse"], "error: --score 'rmse': expected one of mse, mae, bce"),
        (["--normal-classes", "0", "--anomaly-data", "x.npy"], "error: --normal-classes and --anomaly-data"),
        (["--data", "missing.npy"], "error: --data: no such file or folder: missing.npy"),
        (["--set", "data.limit=3"], "error: --set data.KEY=VALUE says how to read --data"),
    ],
)
def test_evaluate_bad_requests_write_nothing(cli, trained_run: Path, args: list[str], message: str) -> None:
    before = sorted(p.name for p in trained_run.iterdir())
    result = cli("evaluate", trained_run, *args)
    assert result.exit_code == 2 and result.stderr.startswith(message), result.output
    assert sorted(p.name for p in trained_run.iterdir()) == before


def test_evaluate_refuses_what_is_not_a_completed_run(cli, trained_run: Path, tmp_path: Path) -> None:
    assert cli("evaluate", tmp_path).stderr.startswith("error: not a run directory (no run.json)")
    failed = tmp_path / "failed"
    shutil.copytree(trained_run, failed, ignore=shutil.ignore_patterns("eval-*", "reconstruct-*"))
    info = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    assert "is failed, not completed" in cli("evaluate", failed).stderr
    (failed / "run.json").write_text(json.dumps(info))
    (failed / "model.keras").write_bytes(b"not a zip")
    result = cli("evaluate", failed)
    assert result.exit_code == 2 and "model.keras is corrupt or truncated" in result.stderr
    (failed / "encoder.keras").unlink()
    assert "incomplete: missing encoder.keras" in cli("evaluate", failed).stderr


def test_model_with_code_is_refused_in_safe_mode(cli, trained_run: Path, tmp_path: Path) -> None:
    import keras

    run = tmp_path / "lambda"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval-*", "reconstruct-*"))
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(run / "model.keras")
    result = cli("evaluate", run)
    assert result.exit_code == 2 and "model.keras failed to load" in result.stderr and "safe" in result.stderr


def test_reconstruct_png_idx_and_indices_with_noise(cli, trained_run: Path, tmp_path: Path) -> None:
    Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.jpg")
    digits_like = np.random.default_rng(1).integers(0, 17, (3, 8, 8)).astype(np.uint8)  # the run's 0..16 range
    write_idx(tmp_path / "some-images-idx3-ubyte.gz", digits_like)
    out = tmp_path / "rec"
    result = cli(
        "reconstruct",
        trained_run,
        tmp_path / "a.png",
        tmp_path / "b.jpg",
        tmp_path / "some-images-idx3-ubyte.gz",
        "--indices",
        "0,5",
        "--noise",
        "gaussian:0.3",
        "--save-latent",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert last_line(result) == out and "denoising: PSNR" in result.stdout
    rows = (out / "reconstructions.csv").read_text().splitlines()
    assert rows[0] == "index,input,source_row,label,mse,psnr_noisy,psnr_reconstructed" and len(rows) == 8
    assert (out / "reconstructions.png").is_file() and (out / "000-a-reconstruction.png").is_file()
    assert (out / "000-a-noisy.png").is_file()
    assert Image.open(out / "006-test_5_-reconstruction.png").size == (8, 8)
    assert np.load(out / "latent.npy").shape == (7, 8)


def test_reconstruct_without_noise_into_the_run(cli, trained_run: Path) -> None:
    result = cli("reconstruct", trained_run, "--indices", "1")
    assert result.exit_code == 0, result.output
    out = last_line(result)
    assert out.parent == trained_run and (out / "reconstructions.csv").read_text().startswith(
        "index,input,source_row,label,mse\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: give at least one INPUT file or --indices"),
        (["--indices", "9999"], "error: --indices [9999]: the run's test split has indices 0..79"),
        (["--indices", "0", "--noise", "blur:2"], "error: --noise 'blur:2': expected"),
        (["--indices", "0", "--noise", "mask:1.5"], "error: --noise 'mask:1.5': the mask fraction must be in (0, 1]"),
        (["missing.png"], "error: input not found: missing.png"),
    ],
)
def test_reconstruct_bad_requests(cli, trained_run: Path, args: list[str], message: str) -> None:
    result = cli("reconstruct", trained_run, *args)
    assert result.exit_code == 2 and result.stderr.startswith(message), result.output


def test_reconstruct_inputs_of_the_wrong_shape(cli, trained_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((2, 10, 10)))
    result = cli("reconstruct", trained_run, tmp_path / "wide.npy")
    assert result.exit_code == 2 and "samples have shape (10, 10), but the model expects (8, 8, 1)" in result.stderr
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    result = cli("reconstruct", trained_run, tmp_path / "broken.png")
    assert result.exit_code == 2 and "cannot read it as an image" in result.stderr


# Injected into a copy of the report: records script errors and failed resources, and once the
# page has loaded, writes what a person would see into an attribute that --dump-dom prints.
BROWSER_PROBE = """<script>
window.probeErrors = [];
const record = (text) => probeErrors.push(String(text).slice(0, 200));
window.addEventListener("error", (e) => record(e.message || (e.target && e.target.src) || e), true);
const consoleError = console.error;
console.error = (...args) => { record(args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const images = [...document.images];
  const seen = {images: images.length, errors: probeErrors,
    broken: images.filter((i) => !i.complete || i.naturalWidth === 0 || i.naturalHeight === 0).length};
  document.documentElement.setAttribute("data-probe", JSON.stringify(seen));
});
</script>"""
CHROMIUM_INSTALL = "apt-get install chromium (as root; .ci/run does it in CI)"


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(cli, trained_run: Path, tmp_path: Path) -> None:
    """What a person opening report.html sees: no script or resource errors, every plot decoded
    with a real size, the headline metrics as text, and a page that is not blank."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: no Chromium; {CHROMIUM_INSTALL}")
        pytest.skip(f"no Chromium on this machine; {CHROMIUM_INSTALL}")
    result = cli("evaluate", trained_run, "--out", tmp_path / "ev")
    assert result.exit_code == 0
    report = tmp_path / "ev" / "report.html"
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("<head>", "<head>" + BROWSER_PROBE, 1))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--virtual-time-budget=10000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([browser, *flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, f"the page never finished loading: {dom.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen == {"images": 6, "broken": 0, "errors": []}  # (class_extremes.png: labelled images)
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    for heading in ("Experiment", "Reconstruction", "Latent space"):
        assert heading in text
    assert f"{metrics['reconstruction']['mse']:.5g}" in text and f"{metrics['reconstruction']['psnr']:.5g}" in text
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1000,4000", report.as_uri()],
        capture_output=True,
        timeout=180,
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels < 128).mean() > 0.01  # the plots and text drew something dark on the white page
    assert (pixels > 200).mean() > 0.3  # and it is a page, not a black screen


@pytest.mark.parametrize("command", [["evaluate"], ["reconstruct", "--indices", "0"]])
def test_an_existing_output_folder_is_never_overwritten(cli, trained_run: Path, tmp_path: Path, command) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.json").write_text("mine")
    result = cli(command[0], trained_run, *command[1:], "--out", out)
    assert result.exit_code == 2 and "already exists and is not an empty folder" in result.stderr
    assert [p.name for p in out.iterdir()] == ["metrics.json"] and (out / "metrics.json").read_text() == "mine"


def test_a_single_sample_is_evaluated_without_a_traceback(cli, trained_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.random.default_rng(0).random((1, 8, 8)) * 16)
    result = cli("evaluate", trained_run, "--data", tmp_path / "one.npy", "--out", tmp_path / "one")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "one" / "latent.png").is_file()


def test_normal_classes_absent_from_the_labels(cli, trained_run: Path) -> None:
    result = cli("evaluate", trained_run, "--normal-classes", "42")
    assert result.exit_code == 2 and result.stderr.startswith("error: --normal-classes [42]: none occur in the labels")


def test_option_errors_name_the_option(cli, trained_run: Path, tmp_path: Path) -> None:
    result = cli("evaluate", trained_run, "--anomaly-data", tmp_path / "nope.npz")
    assert result.stderr.startswith("error: --anomaly-data: no such file or folder")
    assert cli("evaluate", trained_run, "--normal-classes", "a,b").stderr.startswith("error: --normal-classes:")


def test_latent_metrics_cover_every_label_with_normal_classes(cli, trained_run: Path, tmp_path: Path) -> None:
    result = cli("evaluate", trained_run, "--normal-classes", "0", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["latent"]["n_classes"] == 10 and "anomaly" in metrics
