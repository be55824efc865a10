"""Classical anomaly detectors beside the autoencoder, fitted on the same training rows.

`aecli evaluate` reports them with the autoencoder's own AUROC and AUPRC whenever the evaluated
rows are labelled, so a user sees at once whether the autoencoder earns its place on their data:
scikit-learn's IsolationForest (the field's default baseline, default settings) and PCA's
reconstruction error with as many components as the autoencoder's code (a linear autoencoder of
the same size). Both see the rows the model saw, scaled the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASELINE_TRAINING_ROWS = 20_000  # a random subsample of larger training splits: seconds, not minutes
ISOLATION_TREES = 100  # scikit-learn's default


def baseline_scores(x_train: np.ndarray, x: np.ndarray, code_size: int, seed: int) -> dict[str, np.ndarray]:
    """Per-row anomaly scores of `x` (higher = more anomalous) from each baseline fitted on `x_train`."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest

    train, rows = x_train.reshape(len(x_train), -1), x.reshape(len(x), -1)
    if len(train) > BASELINE_TRAINING_ROWS:
        train = train[np.random.default_rng(seed).choice(len(train), BASELINE_TRAINING_ROWS, replace=False)]
    forest = IsolationForest(n_estimators=ISOLATION_TREES, random_state=seed).fit(train)
    scores = {"isolation_forest": -forest.score_samples(rows)}
    components = max(1, min(code_size, train.shape[1] - 1, len(train) - 1))
    pca = PCA(n_components=components, random_state=seed).fit(train)
    residual = rows - pca.inverse_transform(pca.transform(rows))
    scores[f"pca_{components}"] = np.mean(np.square(residual, dtype=np.float64), axis=1)
    return scores


def baseline_report(
    x_train: np.ndarray, x: np.ndarray, is_anomaly: np.ndarray, code_size: int, seed: int
) -> dict[str, dict[str, Any]]:
    """AUROC and AUPRC of each baseline on the labelled rows `x` (anomalies the positive class)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not 0 < int(is_anomaly.sum()) < len(is_anomaly):
        return {}
    return {
        name: {
            "auroc": float(roc_auc_score(is_anomaly, scores)),
            "auprc": float(average_precision_score(is_anomaly, scores)),
        }
        for name, scores in baseline_scores(x_train, x, code_size, seed).items()
    }
