"""How well a text model reconstructs, per text: the cross-entropy it was trained on (xent), and
token accuracy (sequence models) or the share of a text's words among its top reconstructed
words (bag-of-words models); and the scikit-learn baselines its embeddings are measured
against: TF-IDF cosine and LSA (TF-IDF + truncated SVD) at the embedding's dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from keras import ops

from aecli.data import Dataset
from aecli.data.labels import label_name
from aecli.data.text_stream import StreamedTexts
from aecli.evaluation import SplitReport, error_quantiles

TEXT_BATCH = 256  # texts per model call: a sequence model's logits are batch x length x vocabulary


@dataclass
class TextErrors:
    errors: dict[str, np.ndarray]  # per text: xent (and for bags of words bce, mse, mae of word presence)
    accuracy: np.ndarray  # per text: tokens right (sequence) or words recalled (bow)
    accuracy_name: str


def text_errors(model: Any, x: np.ndarray, model_kind: str, loss_name: str) -> TextErrors:
    """Per-text errors of `model` on vectorized texts `x`, a batch at a time."""
    from aecli.text_layers import bag_errors, token_errors

    parts: dict[str, list[np.ndarray]] = {}
    accuracy: list[np.ndarray] = []
    for start in range(0, len(x), TEXT_BATCH):
        batch = x[start : start + TEXT_BATCH]
        output = model.predict_on_batch(batch)
        if model_kind == "sequence":
            xent, right = token_errors(batch, output)
            columns = {"xent": np.asarray(ops.convert_to_numpy(xent), np.float64)}
            accuracy.append(np.asarray(ops.convert_to_numpy(right), np.float64))
        else:
            probabilities = np.asarray(ops.convert_to_numpy(output), np.float64)
            present = (batch > 0).astype(np.float64)
            residual = probabilities - present
            bce = np.asarray(ops.convert_to_numpy(bag_errors(batch, output, "bce")), np.float64)
            own = bce if loss_name == "bce" else bag_errors(batch, output, loss_name)  # xent: the model's own loss
            columns = {
                "xent": np.asarray(ops.convert_to_numpy(own), np.float64),
                "bce": bce,
                "mse": np.mean(residual**2, axis=1),
                "mae": np.mean(np.abs(residual), axis=1),
            }
            accuracy.append(word_recall(output, present))
        for name, values in columns.items():
            parts.setdefault(name, []).append(values)
    errors = {name: np.concatenate(values) for name, values in parts.items()}
    name = "token_accuracy" if model_kind == "sequence" else "word_recall"
    return TextErrors(errors, np.concatenate(accuracy) if accuracy else np.zeros(0), name)


def text_split_report(
    model: Any, data: Dataset | StreamedTexts, part: str, per_class: bool, kind: str, loss: str
) -> SplitReport:
    """evaluation.report_split for a text model: scored by its own cross-entropy. A streamed
    text file is scored a block at a time, keeping only the per-text errors."""
    if isinstance(data, StreamedTexts):
        blocks = [(text_errors(model, x, kind, loss), y, rows) for x, y, rows in data.batches(part)]
        found = TextErrors(
            {name: np.concatenate([b[0].errors[name] for b in blocks]) for name in blocks[0][0].errors},
            np.concatenate([b[0].accuracy for b in blocks]),
            blocks[0][0].accuracy_name,
        )
        y = None if data.labels is None else np.concatenate([b[1] for b in blocks])
        origin = {"source_row": np.concatenate([b[2] for b in blocks])}
    else:
        x, y = data.split(part)
        found, origin = text_errors(model, x, kind, loss), data.origin(part)
    names = data.label_names if per_class else None
    return SplitReport(text_summary(found, y if per_class else None, names, kind), found.errors, y, origin)


def word_recall(probabilities: Any, present: np.ndarray) -> np.ndarray:
    """Per text: of its n distinct words, the share among the n words the model rates likeliest.
    Only each row's likeliest max(n) words are found (top_k): a full sort of 10,000 columns per
    text cost most of a report over many texts."""
    counts = present.sum(axis=1).astype(np.int64)
    most = int(counts.max()) if len(counts) else 0
    if most == 0:
        return np.zeros(len(present))
    _, top = ops.top_k(ops.convert_to_tensor(probabilities, "float32"), most)
    within = np.arange(most)[None, :] < counts[:, None]  # each text's first n of them
    hits = (np.take_along_axis(present, np.asarray(ops.convert_to_numpy(top)), axis=1) * within).sum(axis=1)
    return hits / np.maximum(counts, 1)


def text_summary(
    found: TextErrors, labels: np.ndarray | None, label_names: list[str] | None, model_kind: str
) -> dict[str, Any]:
    """The metrics.json body of a text split: mean errors (and perplexity), per class, quantiles."""
    xent = found.errors["xent"]
    reconstruction = {name: float(np.mean(values)) for name, values in found.errors.items()}
    reconstruction[found.accuracy_name] = float(np.mean(found.accuracy))
    if model_kind == "sequence":
        reconstruction["perplexity"] = float(math.exp(min(reconstruction["xent"], 700.0)))
    report: dict[str, Any] = {"n_samples": len(xent), "reconstruction": reconstruction}
    if labels is not None:
        report["per_class"] = {
            label_name(label, label_names): {
                "xent": float(np.mean(xent[labels == label])),
                "n": int(np.sum(labels == label)),
            }
            for label in np.unique(labels)
        }
    report["error_quantiles"] = error_quantiles(xent)
    return report


@dataclass
class Baselines:
    """TF-IDF (scikit-learn's TfidfVectorizer) and LSA fitted on a run's training texts."""

    tfidf: Any
    lsa: Any  # TruncatedSVD, or None when the vocabulary is too small for the dimension
    dimensions: int

    def vectors(self, texts: np.ndarray) -> dict[str, np.ndarray]:
        tfidf = self.tfidf.transform(list(texts))
        out = {"tf-idf": tfidf}
        if self.lsa is not None:
            out[f"lsa-{self.dimensions}"] = self.lsa.transform(tfidf)
        return out


def fit_baselines(train_texts: np.ndarray, dimensions: int, seed: int = 0) -> Baselines:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer()
    matrix = tfidf.fit_transform(list(train_texts))
    rank = min(matrix.shape) - 1
    lsa = TruncatedSVD(min(dimensions, rank), random_state=seed).fit(matrix) if rank >= 1 else None
    return Baselines(tfidf, lsa, dimensions if lsa is None else lsa.n_components)


def cosine_pairs(first: Any, second: Any) -> np.ndarray:
    """Row-wise cosine similarity of two matrices (dense or scipy sparse)."""
    from sklearn.preprocessing import normalize

    a, b = normalize(first), normalize(second)
    products = a.multiply(b).sum(axis=1) if hasattr(a, "multiply") else np.sum(a * b, axis=1)
    return np.asarray(products).ravel()


def correlations(similarity: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    return {
        "spearman": float(spearmanr(similarity, gold).statistic),
        "pearson": float(pearsonr(similarity, gold).statistic),
    }


def nearest_neighbours(codes: np.ndarray, texts: np.ndarray, queries: int = 5, k: int = 3) -> list[dict[str, Any]]:
    """For the first `queries` texts: their `k` nearest others by cosine of the codes."""
    from sklearn.preprocessing import normalize

    unit = normalize(codes)
    shown = []
    for index in range(min(queries, len(codes))):
        similarity = unit @ unit[index]
        similarity[index] = -np.inf
        closest = np.argsort(-similarity)[:k]
        shown.append(
            {
                "text": str(texts[index]),
                "neighbours": [{"text": str(texts[j]), "cosine": float(similarity[j])} for j in closest],
            }
        )
    return shown
