"""`aecli evaluate` on a text run: reconstruction (cross-entropy, perplexity and token accuracy,
or word presence and recall), latent quality with labels, sentence-pair similarity (--pairs),
and anomaly detection, each beside TF-IDF and LSA baselines fitted on the run's training texts
(LSA at the embedding's dimension), so the table says at once whether the autoencoder wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aecli.calibration import threshold_in_use
from aecli.config import TextConfig
from aecli.data import label_codes, present_labels
from aecli.data.arrays import origin_columns
from aecli.data.text import TextColumns, TextSplits, load_texts_for_model, read_texts, split_texts
from aecli.data.text_stream import split_streamed_texts
from aecli.data.vocabulary import Vocabulary
from aecli.errors import DataError, EvaluationError
from aecli.evaluation import anomaly_report, latent_report, predict_batched, project_2d
from aecli.reporting import (
    plot_latent,
    plot_loss_curves,
    read_history_csv,
    write_errors_csv,
    write_metrics_json,
    write_report,
)
from aecli.runs import StagedOutputDir, now_iso
from aecli.text_evaluation import (
    Baselines,
    correlations,
    cosine_pairs,
    fit_baselines,
    nearest_neighbours,
    text_errors,
    text_summary,
)
from aecli.trained_run import TrainedRun, load_encoder, load_model


@dataclass
class TextEvaluation:
    out_dir: Path
    metrics: dict[str, Any]
    report_html: Path


def evaluate_text_run(run: TrainedRun, request: Any) -> TextEvaluation:
    """Everything is computed before the output folder is created."""
    text = run.data_config_for(run.config.data.source, [], "data").text  # the run's, its vocabulary checked
    assert text is not None and text.vocabulary is not None
    vocabulary = Vocabulary.read(text.vocabulary)
    seed = run.config.training.seed
    streamed = run.info["data"].get("streamed", False)  # as training split them
    splits = (split_streamed_texts if streamed else split_texts)(run.config.data, seed)
    train_texts = splits.splits["train"].x
    evaluated, description = _evaluated(run, request, splits, text, vocabulary)
    texts, x, labels, names, origin = evaluated
    model = load_model(run.path / "model.keras", compile=False)
    encoder = load_encoder(run.path)
    kind, loss = run.config.model.kind, run.config.loss.name
    found = text_errors(model, x, kind, loss)
    metrics: dict[str, Any] = text_summary(found, labels, names, kind)
    codes = predict_batched(encoder, x)
    baselines = fit_baselines(train_texts, codes.shape[1], run.config.training.seed)
    if labels is not None:
        metrics["latent"] = _latent_table(codes, texts, labels, baselines, run.config.training.seed)
    if request.pairs is not None:
        pairs = _pair_table(request.pairs, request.pair_columns, encoder, baselines, vectorizer(text, vocabulary))
        metrics["pairs"] = pairs
    is_anomaly = None
    if request.normal_classes is not None:
        if labels is None:
            raise EvaluationError("--normal-classes: the evaluated texts have no labels (data.label_column)")
        is_anomaly = ~np.isin(labels, label_codes(request.normal_classes, names, "--normal-classes"))
        if is_anomaly.all():  # a typo, most likely: say what there is
            present = present_labels(labels, names)
            raise EvaluationError(
                f"--normal-classes {request.normal_classes}: none occur in the labels (present: {present})"
            )
        metrics["anomaly"] = _anomaly_table(run, found.errors["xent"], texts, is_anomaly, baselines, train_texts)
    metrics = {"run": str(run.path), "data": description, "evaluated": now_iso(), "modality": "text", **metrics}
    points, method = project_2d(codes, "tsne" if request.tsne else "pca", seed=run.config.training.seed)
    neighbours = nearest_neighbours(codes, texts)
    metrics["neighbours"] = neighbours
    staged = StagedOutputDir(request.out, run.path, "eval")
    with staged as out_dir:
        write_metrics_json(out_dir / "metrics.json", metrics)
        write_errors_csv(out_dir / "errors.csv", found.errors, labels, names, None, origin)
        plot_loss_curves(read_history_csv(run.path / "history.csv"), out_dir / "loss_curves.png")
        plot_latent(points, labels, method, out_dir / "latent.png", names)
        write_report(out_dir, f"aecli evaluation of {run.path.name}", _blocks(run, metrics, found.accuracy_name))
    final = staged.final or out_dir
    return TextEvaluation(final, metrics, final / "report.html")


Evaluated = tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str] | None, dict[str, np.ndarray]]


def vectorizer(text: TextConfig, vocabulary: Vocabulary) -> Any:
    from aecli.vectorizer import vectorize

    return lambda texts: vectorize(texts, text, vocabulary)


def _evaluated(
    run: TrainedRun, request: Any, splits: TextSplits, text: TextConfig, vocabulary: Vocabulary
) -> tuple[Evaluated, str]:
    if request.data is None:  # the run's test split: only its texts are vectorized
        test = splits.splits["test"]
        x = vectorizer(text, vocabulary)(test.x)
        return (test.x, x, test.y, splits.label_names, origin_columns(test.positions, test.ids)), "the test split"
    cfg = run.data_config_for(request.data, request.data_overrides, "--data")
    try:
        samples = load_texts_for_model(cfg, run.sample_shape, run.scaling)
    except DataError as exc:
        raise DataError(str(exc).replace("data.source", "--data", 1)) from None
    assert samples.texts is not None
    evaluated = (samples.texts, samples.x, samples.y, samples.label_names, samples.origin())
    return evaluated, str(request.data)


def _latent_table(
    codes: np.ndarray, texts: np.ndarray, labels: np.ndarray, baselines: Baselines, seed: int
) -> dict[str, Any]:
    """latent_report of the codes, and of each baseline's vectors of the same texts; every
    vector at unit length first, since texts are compared by cosine."""
    from sklearn.preprocessing import normalize

    table = {"autoencoder": latent_report(normalize(codes), labels, seed)}
    for name, vectors in baselines.vectors(texts).items():
        table[name] = latent_report(normalize(vectors), labels, seed)
    return {name: report for name, report in table.items() if report is not None}


def _pair_table(
    path: Path, columns: tuple[str, str, str], encoder: Any, baselines: Baselines, vectorize: Any
) -> dict[str, Any]:
    """Spearman and Pearson of each method's cosine similarity against the pairs' gold scores."""
    if path.suffix.lower() not in (".tsv", ".csv", ".jsonl"):
        raise DataError(f"--pairs {path}: expected a .tsv, .csv or .jsonl file of text pairs and scores")
    try:
        found = read_texts(str(path), TextColumns([columns[0], columns[1]], None, columns[2]), what="--pairs")
    except DataError as exc:
        message = str(exc).replace("data.text_column", "--pair-columns").replace("data.id_column", "--pair-columns")
        raise DataError(message.replace("data.source", "--pairs")) from None
    assert found.ids is not None
    gold = np.full(len(found.ids) // 2, np.nan)
    for pair, value in enumerate(found.ids[::2]):
        try:
            gold[pair] = float(value)
        except ValueError:
            line = found.lines[2 * pair]
            raise DataError(f"--pairs {path}: line {line}: the score {value!r} is not a number") from None
    if len(gold) < 3 or not np.isfinite(gold).all() or np.ptp(gold) == 0:
        raise DataError(f"--pairs {path}: needs at least 3 pairs with finite scores that are not all equal")
    codes = predict_batched(encoder, vectorize(found.texts))
    table = {"n_pairs": len(gold), "autoencoder": correlations(cosine_pairs(codes[::2], codes[1::2]), gold)}
    for name, vectors in baselines.vectors(found.texts).items():
        table[name] = correlations(cosine_pairs(vectors[::2], vectors[1::2]), gold)
    return table


def _anomaly_table(
    run: TrainedRun,
    scores: np.ndarray,
    texts: np.ndarray,
    is_anomaly: np.ndarray,
    baselines: Baselines,
    train_texts: np.ndarray,
) -> dict[str, Any]:
    """AUROC/AUPRC of the autoencoder's cross-entropy, of LSA's reconstruction error and of the
    TF-IDF distance to the nearest training text."""
    in_use = threshold_in_use(run.path, run.metrics, "xent", None)  # thresholds.json's, or the run's default
    table = {"autoencoder": {**anomaly_report(scores, is_anomaly, in_use.value), "threshold_spec": in_use.method}}
    vectors = baselines.vectors(texts)
    train = baselines.vectors(train_texts)
    nearest = np.asarray((vectors["tf-idf"] @ train["tf-idf"].T).max(axis=1).todense()).ravel()
    for name, values in (("tf-idf", 1 - nearest), *_lsa_residuals(baselines, vectors)):
        table[name] = {**anomaly_report(values, is_anomaly, float(np.percentile(values, 95))), "threshold_spec": "p95"}
    return table


def _lsa_residuals(baselines: Baselines, vectors: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    if baselines.lsa is None:
        return []
    tfidf = vectors["tf-idf"]
    rebuilt = baselines.lsa.inverse_transform(baselines.lsa.transform(tfidf))
    return [(f"lsa-{baselines.dimensions}", np.asarray(np.square(tfidf.toarray() - rebuilt).sum(axis=1)).ravel())]


def _blocks(run: TrainedRun, metrics: dict[str, Any], accuracy: str) -> list[tuple[str, Any]]:
    model = run.config.model
    blocks: list[tuple[str, Any]] = [
        ("text", f"Run {run.path} evaluated on {metrics['data']} ({metrics['n_samples']} texts)."),
        ("heading", "Experiment"),
        (
            "table",
            {
                "data": run.config.data.source,
                "model": model.kind,
                "latent_dim": model.latent_dim,
                "loss": run.config.loss.name,
            },
        ),
        ("image", ("loss_curves.png", "Training and validation loss per epoch")),
        ("heading", "Reconstruction"),
        ("table", metrics["reconstruction"]),
    ]
    if "latent" in metrics:
        header = ["method", "kmeans_nmi", "kmeans_ari", "silhouette", "knn_accuracy"]
        rows = [[name, *(report.get(key) for key in header[1:])] for name, report in metrics["latent"].items()]
        blocks += [("heading", "Embeddings against labels (baselines on the same texts)"), ("table", [header, *rows])]
    if "pairs" in metrics:
        pairs = {k: v for k, v in metrics["pairs"].items() if isinstance(v, dict)}
        rows = [["method", "spearman", "pearson"], *([name, v["spearman"], v["pearson"]] for name, v in pairs.items())]
        blocks += [("heading", f"Sentence pairs ({metrics['pairs']['n_pairs']}): cosine against gold"), ("table", rows)]
    if "anomaly" in metrics:
        rows = [["method", "auroc", "auprc", "f1"]]
        rows += [[name, v["auroc"], v["auprc"], v["f1"]] for name, v in metrics["anomaly"].items()]
        blocks += [("heading", "Anomaly detection (positive class: anomaly)"), ("table", rows)]
    blocks.append(("heading", "Nearest neighbours (cosine of the embeddings)"))
    for entry in metrics["neighbours"]:
        rows = [["neighbour", "cosine"], *([_short(n["text"]), n["cosine"]] for n in entry["neighbours"])]
        blocks += [("text", f"“{_short(entry['text'])}”"), ("table", rows)]
    blocks.append(("image", ("latent.png", "The embeddings in two dimensions, coloured by label")))
    return blocks


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
