"""`make bench-full`, images: one-class MNIST. Train on one digit, score all ten, AUROC per digit.

    python benchmarks/bench_oneclass.py [--digits 0,1,...] [--seeds 0] [--variants recipe,conv]
                                        [--out benchmarks/results] [--render]

Protocol: the 10,000 MNIST images of ../shared/data/mnist split 8,000 / 2,000 by the run's seed
(data.test_split 0.2, as every MNIST config reads them offline). Per digit: the 8,000 are
filtered to that digit (`data.classes`), 10% of those held out for the threshold, the model
trained on the rest; `aecli evaluate RUN --normal-classes DIGIT` scores the 2,000 test images
(about 200 of the digit, 1,800 others as anomalies), in one process (the functions the commands
call). Each variant changes `configs/mnist_oneclass.yaml` by --set overrides (VARIANTS); every
per-sample error evaluate writes (dssim, mse, bce) is scored from its errors.csv, so the scores
of one model are compared on the same reconstructions. Baselines on the same training images,
same run: evaluate's own IsolationForest and PCA (as many components as the code), and the
distance to the nearest training image in pixel space (1-NN). Published means (Deep SVDD, OCGAN,
GeoTrans, ARNet) are from their papers, trained on the 6,000 images per digit of MNIST's
training set. Writes oneclass.json and oneclass.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
RECIPE = ROOT / "configs" / "mnist_oneclass.yaml"
VARIANTS = {
    "recipe": [],
    "conv": ["model.kind=conv", "model.filters=[32,64]", "model.encoder=null"],
    "combined": ["anomaly.score=combined"],
    "augment": ["data.augment.translation=0.08", "data.augment.rotation=0.03"],
    "wide": ["model.encoder=[512,256]", "model.latent_dim=64"],
}
SCORES = ("dssim", "mse", "bce", "combined")
# The scores shown per variant: a variant that changes only the score shows only that score.
SHOWN = {"recipe": ("dssim", "mse", "bce"), "conv": ("dssim", "mse"), "combined": ("combined",)}
PUBLISHED = {"Deep SVDD": 0.948, "OCGAN": 0.975, "GeoTrans": 0.980, "ARNet": 0.983}


def run_digit(digit: int, seed: int, overrides: list[str], runs: Path) -> dict[str, Any]:
    from aecli.commands.evaluate import EvaluateRequest, evaluate_run
    from aecli.commands.train import train_run
    from aecli.config import load_config

    settings = [f"data.source={MNIST}", f"data.classes=[{digit}]", f"training.seed={seed}", *overrides]
    config = load_config(RECIPE, settings)
    started = time.perf_counter()
    outcome = train_run(config, runs, f"digit{digit}-{seed}", "bench_oneclass")
    trained = time.perf_counter()
    evaluated = evaluate_run(
        EvaluateRequest(run_dir=outcome.run_dir, normal_classes=[digit], out=runs / f"eval-{outcome.run_dir.name}")
    )
    anomaly = evaluated.metrics["anomaly"]
    result: dict[str, Any] = {
        "train_seconds": trained - started,
        "seconds": time.perf_counter() - started,
        "score": anomaly["score"],
        "auroc": anomaly["auroc"],
        "baselines": {k: v["auroc"] for k, v in anomaly.get("baselines", {}).items() if isinstance(v, dict)},
        "normal_flagged": _normal_flag_rate(evaluated.out_dir),
    }
    result["scores"] = _auroc_per_error(evaluated.out_dir / "errors.csv")
    return result


def _auroc_per_error(path: Path) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    truth = [row["is_anomaly"] == "1" for row in rows]
    return {name: float(roc_auc_score(truth, [float(row[name]) for row in rows])) for name in SCORES if name in rows[0]}


def _normal_flag_rate(out_dir: Path) -> float:
    """The share of the test split's normal images the run's threshold flags."""
    with (out_dir / "errors.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["is_anomaly"] == "0"]
    return sum(row["flagged"] == "1" for row in rows) / max(len(rows), 1)


def pixel_nearest_neighbour(digit: int, seed: int) -> float:
    """AUROC of the distance to the nearest training image, on the rows the recipe trains on."""
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    from aecli.config import load_config
    from aecli.data.loading import load_dataset

    config = load_config(RECIPE, [f"data.source={MNIST}", f"data.classes=[{digit}]", f"training.seed={seed}"])
    data = load_dataset(config.data, seed)
    train, test = data.x_train.reshape(len(data.x_train), -1), data.x_test.reshape(len(data.x_test), -1)
    distance = NearestNeighbors(n_neighbors=1).fit(train).kneighbors(test)[0][:, 0]
    return float(roc_auc_score(np.asarray(data.y_test) != digit, distance))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="recipe")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--render", action="store_true", help="only rewrite oneclass.md from the saved oneclass.json")
    args = parser.parse_args()
    if args.render:
        (args.out / "oneclass.md").write_text(render(json.loads((args.out / "oneclass.json").read_text())))
        print((args.out / "oneclass.md").read_text())
        return
    sys.path.insert(0, str(ROOT))
    digits = [int(d) for d in args.digits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    from aecli.backend import select_backend

    select_backend("tensorflow")
    results: dict[str, Any] = {"digits": {}, "seeds": seeds, "variants": variants}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aecli-bench-oneclass-") as temp:
        for digit in digits:
            per_seed = []
            for seed in seeds:
                entry = {v: run_digit(digit, seed, VARIANTS[v], Path(temp)) for v in variants}
                entry["pixel_1nn"] = {"auroc": pixel_nearest_neighbour(digit, seed)}
                per_seed.append(entry)
            results["digits"][str(digit)] = summarize(per_seed)
            shown = {v: results["digits"][str(digit)][v] for v in variants}
            line = " ".join(f"{v}:{k}={a:.3f}" for v, r in shown.items() for k, a in r["scores"].items())
            print(f"digit {digit}: {line} 1nn={results['digits'][str(digit)]['pixel_1nn']['auroc']:.3f}", flush=True)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oneclass.json").write_text(json.dumps(results, indent=2))
    markdown = render(results)
    (args.out / "oneclass.md").write_text(markdown)
    print(markdown)


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of every number, nested as one seed's entry is."""

    def mean(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: mean([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], (int, float)):
            return statistics.fmean(values)
        return values[0]

    return mean(per_seed)


def render(results: dict[str, Any]) -> str:
    variants = results["variants"]
    first = next(iter(results["digits"].values()))
    columns = [(v, s) for v in variants for s in SHOWN.get(v, ("dssim",)) if s in first[v]["scores"]]
    head = ["digit", *(f"{v} {s}" for v, s in columns), "IsolationForest", "PCA", "pixel 1-NN", "s/digit"]
    lines = [
        "## Images: one-class MNIST (train on one digit, score all ten)",
        "",
        f"`python benchmarks/bench_oneclass.py --variants {','.join(variants)}` (seeds {results['seeds']}). "
        "AUROC on the 2,000 test images of ../shared/data/mnist's 8,000 / 2,000 split, the model trained on the "
        "digit's images among the 8,000 (about 720 after 10% are held out for the threshold); the digit is normal, "
        "the nine others anomalies. `recipe` is `configs/mnist_oneclass.yaml` as shipped (dense 256-128-32, 1,200 "
        "steps, scored by dssim); each column scores that variant's model by one per-sample error. "
        "IsolationForest and PCA (as many components as the code) are evaluate's baselines, the pixel 1-NN the "
        "distance to the nearest training image, all fitted on the same training images in the same run.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    table: dict[str, list[float]] = {h: [] for h in head[1:]}
    for digit, entry in results["digits"].items():
        baselines = entry[variants[0]]["baselines"]
        cells = [entry[v]["scores"][s] for v, s in columns]
        cells += [
            baselines.get("isolation_forest", float("nan")),
            next((a for k, a in baselines.items() if k.startswith("pca")), float("nan")),
            entry["pixel_1nn"]["auroc"],
        ]
        cells.append(entry[variants[0]]["seconds"])
        for key, value in zip(head[1:], cells, strict=True):
            table[key].append(value)
        lines.append(f"| {digit} | " + " | ".join(f"{c:.3f}" for c in cells[:-1]) + f" | {cells[-1]:.0f} |")
    means = [statistics.fmean(table[h]) for h in head[1:]]
    lows = [min(table[h]) for h in head[1:]]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means[:-1]) + f" | {means[-1]:.0f} |")
    lines.append("| worst digit | " + " | ".join(f"{m:.3f}" for m in lows[:-1]) + " | |")
    flagged = statistics.fmean(e[variants[0]]["normal_flagged"] for e in results["digits"].values())
    lines.append(
        "\nPublished means (trained on MNIST's 6,000 training images per digit, 8x more than here): "
        + ", ".join(f"{name} {value:.3f}" for name, value in PUBLISHED.items())
        + f". The recipe's threshold (fpr:0.05 of the held-out images) flagged {flagged:.1%} of the test split's "
        f"normal images. Whole run {results['seconds'] / 60:.1f} min on this machine."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
