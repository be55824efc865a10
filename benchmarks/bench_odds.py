"""`make bench-full` (a quick subset in `make bench`), tables: aecli's tabular recipe against
IsolationForest and PCA on the ODDS outlier sets, beside PyOD's published numbers.

    python benchmarks/bench_odds.py [--sets thyroid,wbc] [--seeds 0,1,2,3,4] [--variants recipe,mse]
                                    [--quick] [--out benchmarks/results]

Protocol (PyOD's): per set and seed, a random 60/40 split; unsupervised training on the 60% (it
holds the outliers; the labels are never read for training), AUROC and AUPRC on the 40%.
aecli: `configs/tabular_anomaly.yaml` trained on the 60% as a CSV and evaluated with
`aecli evaluate --data test.csv --normal-classes 0`, in one process (the same functions the
commands call). Each variant changes the recipe by --set overrides (VARIANTS). Baselines, same
rows, same run: scikit-learn's IsolationForest() and PCA reconstruction error (as many
components as the code) fitted on the whole 60% (what a user would write in three lines), and
evaluate's own baselines (fitted on the rows the autoencoder trained on). Published: PyOD's
AutoEncoder and best detector per set (../shared/data/odds/pyod_benchmark_roc_extended.csv).
Writes odds.json and odds.md.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
ODDS = ROOT.parent / "shared" / "data" / "odds"
RECIPE = ROOT / "configs" / "tabular_anomaly.yaml"
SETS = [
    "annthyroid",
    "arrhythmia",
    "breastw",
    "glass",
    "ionosphere",
    "letter",
    "lympho",
    "mammography",
    "musk",
    "optdigits",
    "pima",
    "satimage-2",
    "thyroid",
    "vertebral",
    "vowels",
    "wbc",
]
QUICK_SETS = ("glass", "thyroid", "wbc", "vowels")
VARIANTS = {
    "recipe": [],
    "mse": ["anomaly.score=mse", "anomaly.neighbours=null"],
    "untrimmed": ["training.robust=null"],
    "knn": ["anomaly.score=knn"],
    "zscore": ["data.scaling=zscore"],
    # semi-supervised: trained on the normal rows of the 60% only (the labels choose them)
    "semi": ["data.classes=[0]"],
}
PUBLISHED_COLUMNS = [
    "ABOD",
    "CBLOF",
    "FB",
    "HBOS",
    "IForest",
    "KNN",
    "LOF",
    "MCD",
    "OCSVM",
    "PCA",
    "AutoEncoder",
    "CD",
    "COPOD",
    "DIF",
    "ECOD",
    "GMM",
    "KDE",
    "LODA",
    "QMCD",
    "Sampling",
    "SOS",
    "INNE",
    "KPCA",
    "LMDD",
    "LSCP",
    "LUNAR",
    "SOD",
]


def load_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    mat = scipy.io.loadmat(ODDS / f"{name}.mat")
    return mat["X"].astype(np.float64), mat["y"].ravel().astype(int)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(x.shape[1])] + ["label"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [int(label)])


def sklearn_baselines(train: np.ndarray, test: np.ndarray, y_test: np.ndarray, code: int, seed: int) -> dict:
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, roc_auc_score

    from aecli.baselines import baseline_scores

    started = time.perf_counter()
    forest = IsolationForest(random_state=seed).fit(train)
    forest_scores = -forest.score_samples(test)
    forest_seconds = time.perf_counter() - started
    # PCA on z-scored columns (what it needs to be fair), the same number of components as the code
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1
    pca = next(
        v
        for k, v in baseline_scores((train - mean) / std, (test - mean) / std, code, seed).items()
        if k != "isolation_forest"
    )
    return {
        "iforest": {
            "auroc": roc_auc_score(y_test, forest_scores),
            "auprc": average_precision_score(y_test, forest_scores),
            "seconds": forest_seconds,
        },
        "pca": {"auroc": roc_auc_score(y_test, pca), "auprc": average_precision_score(y_test, pca)},
    }


def run_aecli(train_csv: Path, test_csv: Path, overrides: list[str], seed: int, runs: Path) -> dict[str, Any]:
    from aecli.commands.evaluate import EvaluateRequest, evaluate_run
    from aecli.commands.train import train_run
    from aecli.config import load_config

    settings = [f"data.source={train_csv}", "data.label_column=label", f"training.seed={seed}", *overrides]
    config = load_config(RECIPE, settings)
    started = time.perf_counter()
    outcome = train_run(config, runs, f"odds-{seed}", "bench_odds")
    seconds = time.perf_counter() - started
    evaluated = evaluate_run(
        EvaluateRequest(
            run_dir=outcome.run_dir,
            data=str(test_csv),
            data_overrides=["data.label_column=label"],
            normal_classes=["0"],
            out=runs / f"eval-{outcome.run_dir.name}",
        )
    )
    anomaly = evaluated.metrics["anomaly"]
    code = yaml.safe_load((outcome.run_dir / "config.yaml").read_text())["model"]["latent_dim"]
    return {
        "auroc": anomaly["auroc"],
        "auprc": anomaly["auprc"],
        "seconds": seconds,
        "epochs": outcome.metrics["training"]["epochs_run"],
        "best_epoch": outcome.metrics["training"]["best_epoch"] or 0,
        "code": int(code),
        "evaluate_baselines": anomaly.get("baselines", {}),
        "false_positive_rate": _normal_flag_rate(evaluated.out_dir),
    }


def _normal_flag_rate(out_dir: Path) -> float:
    """The share of the test split's normal rows the run's default threshold flags."""
    with (out_dir / "errors.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["is_anomaly"] == "0"]
    return sum(row["flagged"] == "1" for row in rows) / max(len(rows), 1)


def published() -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    with (ODDS / "pyod_benchmark_roc_extended.csv").open() as handle:
        for row in csv.DictReader(handle):
            values = {c: float(row[c]) for c in PUBLISHED_COLUMNS if c in row and row[c] and float(row[c]) > 0}
            best = max(values, key=lambda c: values[c])
            table[row["Data"]] = {
                "autoencoder": values.get("AutoEncoder", float("nan")),
                "best": values[best],
                "best_name": best,
            }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--variants", default="recipe")
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_SETS)}, seeds 0 and 1")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--render", action="store_true", help="only rewrite odds.md from the saved odds.json")
    args = parser.parse_args()
    if args.render:
        (args.out / "odds.md").write_text(render(json.loads((args.out / "odds.json").read_text())))
        print((args.out / "odds.md").read_text())
        return
    sys.path.insert(0, str(ROOT))
    sets = list(QUICK_SETS) if args.quick else args.sets.split(",")
    seeds = [0, 1] if args.quick else [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    from aecli.backend import select_backend

    select_backend("tensorflow")
    results: dict[str, Any] = {"sets": {}, "seeds": seeds, "variants": variants, "quick": args.quick}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aecli-bench-odds-") as temp:
        for name in sets:
            x, y = load_set(name)
            per_seed = []
            for seed in seeds:
                order = np.random.default_rng(seed).permutation(len(x))
                cut = int(0.6 * len(x))
                train, test = order[:cut], order[cut:]
                folder = Path(temp) / f"{name}-{seed}"
                folder.mkdir()
                write_csv(folder / "train.csv", x[train], y[train])
                write_csv(folder / "test.csv", x[test], y[test])
                entry: dict[str, Any] = {}
                for variant in variants:
                    entry[variant] = run_aecli(
                        folder / "train.csv", folder / "test.csv", VARIANTS[variant], seed, folder
                    )
                entry.update(sklearn_baselines(x[train], x[test], y[test], entry[variants[0]]["code"], seed))
                per_seed.append(entry)
            results["sets"][name] = summarize(per_seed)
            line = " ".join(f"{k}={v['auroc']:.3f}" for k, v in results["sets"][name].items() if "auroc" in v)
            print(f"{name:12s} {line}", flush=True)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "odds.json").write_text(json.dumps(results, indent=2))
    markdown = render(results)
    (args.out / "odds.md").write_text(markdown)
    print(markdown)


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for method in per_seed[0]:
        keys = [k for k in per_seed[0][method] if isinstance(per_seed[0][method][k], (int, float))]
        summary[method] = {k: statistics.fmean(float(entry[method][k]) for entry in per_seed) for k in keys}
    return summary


def render(results: dict[str, Any]) -> str:
    pub = published()
    variants = results["variants"]
    head = [
        "set",
        *(f"aecli {v}" for v in variants),
        "IsolationForest",
        "PCA",
        "PyOD AE (published)",
        "PyOD best (published)",
        "aecli s/seed",
    ]
    command = "python benchmarks/bench_odds.py" + (" --quick" if results.get("quick") else "")
    lines = [
        "## Tables: anomaly detection on the ODDS outlier sets against IsolationForest",
        "",
        f"`{command}` (variants: {', '.join(variants)}). AUROC on the 40% test part of random 60/40 splits "
        "(seeds below), the autoencoder trained on the other 60% without its labels (it holds the outliers), "
        "`configs/tabular_anomaly.yaml` as shipped; IsolationForest() and PCA (z-scored columns, as many "
        "components as the code) fitted on the same 60% in the same run. PyOD's columns are its published "
        "tables (../shared/data/odds), mean of 10 splits of the same protocol."
        + (
            " `semi` is the semi-supervised case: trained on the normal rows of the same 60% only "
            "(`data.classes: [0]`, the labels choose them); IsolationForest stays fitted on all of the 60%, so "
            "it is not a like-for-like baseline for that column."
            if "semi" in variants
            else ""
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    columns: dict[str, list[float]] = {h: [] for h in head[1:-1]}
    wins = dict.fromkeys(variants, 0)
    for name, summary in results["sets"].items():
        p = pub.get(name)
        cells = [summary[v]["auroc"] for v in variants] + [summary["iforest"]["auroc"], summary["pca"]["auroc"]]
        cells += [p["autoencoder"], p["best"]] if p else [float("nan"), float("nan")]
        for v in variants:
            wins[v] += summary[v]["auroc"] > summary["iforest"]["auroc"]
        for key, value in zip(head[1:-1], cells, strict=True):
            columns[key].append(value)
        shown = [f"{c:.3f}" if c == c else "" for c in cells]
        if p:
            shown[-1] += f" ({p['best_name']})"
        lines.append(f"| {name} | " + " | ".join(shown) + f" | {summary[variants[0]]['seconds']:.1f} |")
    means = [
        statistics.fmean(v for v in columns[k] if v == v) if any(v == v for v in columns[k]) else float("nan")
        for k in head[1:-1]
    ]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " | |")
    covered = [n for n in results["sets"] if n in pub]
    if covered:
        sub = {v: statistics.fmean(results["sets"][n][v]["auroc"] for n in covered) for v in variants}
        best = statistics.fmean(pub[n]["best"] for n in covered)
        iforest = statistics.fmean(results["sets"][n]["iforest"]["auroc"] for n in covered)
        lines.append(
            f"\nOn the {len(covered)} sets PyOD's table covers: "
            + ", ".join(f"aecli {v} {sub[v]:.3f}" for v in variants)
            + f", IsolationForest {iforest:.3f}, PyOD's best per set {best:.3f}."
        )
    lines.append(
        "\nWins over IsolationForest (AUROC, mean over seeds): "
        + ", ".join(f"aecli {v} {wins[v]} of {len(results['sets'])}" for v in variants)
        + f". Seeds {results['seeds']}; whole run {results['seconds'] / 60:.1f} min."
    )
    auprc = {v: statistics.fmean(s[v]["auprc"] for s in results["sets"].values()) for v in variants}
    auprc_if = statistics.fmean(s["iforest"]["auprc"] for s in results["sets"].values())
    fpr = statistics.fmean(s[variants[0]]["false_positive_rate"] for s in results["sets"].values())
    lines.append(
        "Mean AUPRC: "
        + ", ".join(f"aecli {v} {auprc[v]:.3f}" for v in variants)
        + f", IsolationForest {auprc_if:.3f}. "
        f"The default threshold (fpr:0.05 of the validation rows) flagged {fpr:.1%} of the test split's normal rows."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
